"""The search on Ray: each trial a Ray Train run of S and T, under ASHA, resumable.

Each trial is a Ray Train run: a Tune *function trainable* builds a ``TorchTrainer`` with
:func:`vireid.training.ray_train.build_trainer` for the trial's configuration and passes
``TuneReportCallback`` so that every epoch's ``ray.train.report`` (``epoch``, ``val_mAP``...)
reaches Tune (the Ray Train V2 pattern, docs "Hyperparameter Tuning with Ray Tune"). A Tune
trial reserves ``tune.driver_cpus`` for this driver function; its Train workers reserve their own
resources in a separate placement group: ``tune.cpus_per_trial`` CPUs and
``tune.gpus_per_trial`` GPUs split evenly over ``train.num_workers`` (0: the train stage's
``train.cpus_per_worker`` each, and one GPU each with ``train.use_gpu``), so a cluster runs
``max_concurrent`` trials when it has ``max_concurrent`` times :func:`trial_resources`
(:func:`cpus_needed`).

With ``tune.scheduler: asha``, ASHA (``AsyncHyperBandScheduler``) stops trials whose
``val_mAP`` falls below the rung cut-off, at epochs ``warmup + grace_period * reduction_factor**k``
(rungs counted after ``train.warmup_epochs``, :class:`vireid.tuning.space.WarmupASHA`); with
``fifo`` every trial runs its ``warmup + tune.epochs`` epochs. The search is seeded random
search (``BasicVariantGenerator(random_state=tune.seed)``).

Resuming: the experiment's name is fixed by the search's inputs (:func:`experiment_name`),
and a search whose ``storage_path/name`` holds Tune state is restored with
``Tuner.restore(..., resume_errored=True)``: finished trials are not run again, unfinished
ones start again and their Ray Train run (named after the trial id) continues from its
last checkpoint. MLflow: one parent run per experiment and one child run per trial (tag
``mlflow.parentRunId``), found again on resume by their tags.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.basic_variant import BasicVariantGenerator

from vireid.config import Config, config_from_dict, config_to_dict
from vireid.data.shards import ShardSet
from vireid.data.staging import ShardSource, StagedFile
from vireid.ray_session import alive_nodes, local_gpus, ray_session, storage_location
from vireid.tracking.store import TrackingTarget, append_tag, check_reachable_from_nodes, client
from vireid.tracking.tags import TAG_TRIAL_NODES
from vireid.tuning.results import collect_trials, summarize_search, write_outputs
from vireid.tuning.space import (
    cpus_needed,
    experiment_name,
    gpus_per_worker,
    judged_metric,
    scheduler,
    search_space,
    trial_config,
)
from vireid.tuning.tracking import EpochLogger, Tracking, child_run, finish_parent, parent_run

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ trial


def run_trial(config: dict[str, Any], *, base: dict[str, Any], shards: ShardSource, train_storage: str,
              tracking: dict[str, str] | None, storage_filesystem: Any = None,
              weights: StagedFile | None = None) -> None:
    """Tune function trainable: one Ray Train run for ``config`` (``memory_size``,
    ``temperature``), reporting every epoch to Tune through ``TuneReportCallback``; its
    workers load the ImageNet weights from ``weights`` (see :func:`run_search`)."""
    ctx = ray.tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    cfg = trial_config(config_from_dict(base), config["memory_size"], config["temperature"])
    callbacks: list[ray.train.UserCallback] = []
    train_tracking = None
    run_id = None
    if tracking is not None:
        t = Tracking(**tracking)
        run_id = child_run(t, trial_id, trial_name, cfg.model.memory_size, cfg.loss.temperature)
        append_tag(t.tracking_uri, run_id, TAG_TRIAL_NODES, ray.get_runtime_context().get_node_id())
        callbacks.append(EpochLogger(t.tracking_uri, run_id))
        train_tracking = {"tracking_uri": t.tracking_uri, "run_id": run_id}
    # Last: once Tune has a trial's final (or ASHA-stopping) result it ends the trial, so the
    # epoch must be in MLflow before Tune sees it.
    callbacks.append(TuneReportCallback())
    # Imported here: the training package is heavy and only the trial actors need it.
    from vireid.training.ray_train import build_trainer

    trainer = build_trainer(cfg, shards, train_storage, trial_id, callbacks=callbacks,
                            tracking=train_tracking, num_to_keep=1, storage_filesystem=storage_filesystem,
                            weights=weights, gpus_per_worker=gpus_per_worker(cfg))
    result = trainer.fit()
    if tracking is not None and run_id is not None:
        client(tracking["tracking_uri"]).set_terminated(run_id, "FAILED" if result.error else "FINISHED")
    if result.error is not None:
        raise result.error


def _cuda_devices() -> int:
    """CUDA devices of this machine (torch imported here: only a GPU search needs it)."""
    import torch

    return torch.cuda.device_count()


class SearchIncomplete(RuntimeError):
    """The search stopped before all trials finished (interrupted); rerun to resume it."""


def run_search(
    cfg: Config,
    shards_dir: str | Path,
    storage_path: str | Path,
    out_dir: str | Path,
    *,
    tracking: TrackingTarget | None = None,
    name: str | None = None,
    callbacks: Sequence[ray.tune.Callback] = (),
    object_store_mb: int = 256,
    storage_filesystem: Any = None,
    shards_at: ShardSource | None = None,
    weights_at: StagedFile | None = None,
) -> dict[str, Any]:
    """Run (or resume) the search and write ``best_params.yaml``, ``summary.json`` and
    ``tune.png`` to ``out_dir``; return the summary.

    ``storage_path``: where Tune and the trials' Ray Train runs keep their state (a folder,
    made absolute, or a URI; shared by all nodes on a cluster). ``name``: the experiment
    name, default :func:`experiment_name`. ``callbacks``: extra Tune callbacks (saved with
    the experiment: a resumed search runs the first run's callbacks). Runs on the Ray of
    ``train.ray_address`` (a new local instance with :func:`cpus_needed` CPUs when empty)
    unless Ray is already initialised. A trial is retried ``train.max_failures`` times.
    ``shards_at``: where the trials' workers read ``shards_dir``'s set (default: the folder
    itself; on a cluster, :func:`vireid.data.staging.shard_source`). ``weights_at``: the
    ImageNet weights file the trials' workers load (:func:`vireid.data.staging.file_source`;
    None: each worker resolves ``model.pretrained`` itself).
    """
    t = cfg.train
    # a new local instance offers this machine's GPUs (refused when fewer than one trial's
    # workers; with fewer than max_concurrent trials' worth, trials wait for each other)
    gpus = 0 if t.ray_address else local_gpus(t.use_gpu, t.num_workers, _cuda_devices() if t.use_gpu else 0,
                                              gpus_per_trial=cfg.tune.gpus_per_trial)
    shards_dir = Path(shards_dir).resolve()
    storage = (str(storage_path) if storage_filesystem is not None
               else storage_location(str(storage_path), Path.cwd()))
    out_dir = Path(out_dir)
    manifest = ShardSet(shards_dir).manifest
    name = name or experiment_name(cfg, manifest)
    exp_path = f"{storage}/{name}"
    with ray_session(cfg.train.ray_address, num_cpus=math.ceil(cpus_needed(cfg)),
                     num_gpus=gpus, object_store_mb=object_store_mb):
        if tracking is not None:
            check_reachable_from_nodes(tracking.tracking_uri, alive_nodes())
        track = parent_run(tracking, cfg, name) if tracking is not None else None
        trainable = ray.tune.with_resources(
            ray.tune.with_parameters(
                run_trial, base=config_to_dict(cfg), shards=shards_at or ShardSource(str(shards_dir)),
                train_storage=f"{exp_path}/train", storage_filesystem=storage_filesystem, weights=weights_at,
                tracking=None if track is None else track.__dict__.copy()),
            {"cpu": cfg.tune.driver_cpus})
        if ray.tune.Tuner.can_restore(exp_path, storage_filesystem=storage_filesystem):
            log.info("resuming Tune experiment %s", exp_path)
            tuner = ray.tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True,
                                           storage_filesystem=storage_filesystem)
        else:
            log.info("starting Tune experiment %s", exp_path)
            tuner = ray.tune.Tuner(
                trainable,
                param_space=search_space(cfg),
                tune_config=ray.tune.TuneConfig(
                    scheduler=scheduler(cfg),
                    # max_concurrent here: Tune's max_concurrent_trials is ignored when a
                    # BasicVariantGenerator is passed in
                    search_alg=BasicVariantGenerator(random_state=cfg.tune.seed,
                                                     max_concurrent=cfg.tune.max_concurrent),
                    num_samples=cfg.tune.num_samples,
                ),
                run_config=ray.tune.RunConfig(
                    name=name, storage_path=storage, storage_filesystem=storage_filesystem,
                    callbacks=list(callbacks),
                    failure_config=ray.tune.FailureConfig(max_failures=cfg.train.max_failures)),
            )
        grid = tuner.fit()
        trials = collect_trials(grid, judged_metric(cfg))
        finished = grid.num_terminated + grid.num_errors
    if finished < cfg.tune.num_samples:
        raise SearchIncomplete(
            f"Tune experiment {exp_path}: {finished} of {cfg.tune.num_samples} trials finished "
            "(interrupted); run again with the same parameters to resume it")
    summary = summarize_search(cfg, trials, name=name, experiment_path=exp_path)
    write_outputs(summary, trials, out_dir)
    if track is not None:
        finish_parent(track, summary, out_dir)
    return summary
