"""The search's definition: the space of S and T, the trial's config, the scheduler, the experiment's name.

Trials keep the recipe's warm-up (``train.warmup_epochs``) and then train ``tune.epochs``
more epochs. ``tune.scheduler: asha`` counts its rungs after the warm-up: a trial is judged
first at epoch ``warmup + grace_period``, then at ``warmup + grace_period * reduction_factor**k``,
never at a warm-up learning rate (:class:`WarmupASHA`); ``fifo`` runs every trial to the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import ray
import ray.train
import ray.tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from vireid.config import Config, config_to_dict, replace

log = logging.getLogger(__name__)


TIME_ATTR = "epoch"
#: ``tune`` keys that place the trials without changing what they compute
RESOURCE_KEYS = ("gpus_per_trial", "cpus_per_trial", "driver_cpus")


def judged_metric(cfg: Config) -> str:
    """The reported metric a trial is judged on (``tune.metric``): ``val_mAP_mean``, the mean
    held-out ``val_mAP`` of the epochs after the warm-up so far (the trainer's record,
    :data:`vireid.training.loop.VAL_MEAN`), or ``val_mAP``, the epoch's own."""
    return cfg.tune.metric


def trial_epochs(cfg: Config) -> int:
    """Epochs of one full trial: the recipe's warm-up, then ``tune.epochs``."""
    return cfg.train.warmup_epochs + cfg.tune.epochs


def trial_config(cfg: Config, memory_size: int, temperature: float) -> Config:
    """``cfg`` with S and T set, :func:`trial_epochs` epochs, validation and a checkpoint every
    epoch (ASHA reads :func:`judged_metric` each epoch; a restarted trial continues from the last one),
    and ``train.cpus_per_worker`` from ``tune.cpus_per_trial`` when that is set."""
    train: dict[str, Any] = {"epochs": trial_epochs(cfg), "validate_every": 1, "checkpoint_every": 1}
    if cfg.tune.cpus_per_trial:
        train["cpus_per_worker"] = cfg.tune.cpus_per_trial // cfg.train.num_workers
    return replace(cfg, model={"memory_size": int(memory_size)},
                   loss={"temperature": float(temperature)}, train=train)


def gpus_per_worker(cfg: Config) -> float | None:
    """A trial's Ray Train worker's GPUs: ``tune.gpus_per_trial / train.num_workers`` when
    ``tune.gpus_per_trial`` is set (a fraction lets trials share a GPU), else None (the train
    stage's layout: one GPU per worker with ``train.use_gpu``)."""
    return cfg.tune.gpus_per_trial / cfg.train.num_workers if cfg.tune.gpus_per_trial else None


def trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial reserves on the cluster: ``CPU`` (its driver, the Tune function
    trainable, ``tune.driver_cpus``, plus its Train workers) and ``GPU`` (its Train workers)."""
    t = cfg.train
    cpus = cfg.tune.cpus_per_trial or t.num_workers * t.cpus_per_worker
    gpus = cfg.tune.gpus_per_trial or (float(t.num_workers) if t.use_gpu else 0.0)
    return {"CPU": cfg.tune.driver_cpus + cpus, "GPU": gpus}


def search_space(cfg: Config) -> dict[str, Any]:
    """``memory_size``: choice of ``tune.memory_sizes``; ``temperature``: log-uniform in
    ``[tune.temperature_min, tune.temperature_max]`` (a constant when they are equal)."""
    t = cfg.tune
    temperature: Any = (t.temperature_min if t.temperature_min == t.temperature_max
                        else ray.tune.loguniform(t.temperature_min, t.temperature_max))
    return {"memory_size": ray.tune.choice(list(t.memory_sizes)), "temperature": temperature}


def experiment_name(cfg: Config, manifest: Mapping[str, Any]) -> str:
    """``tune-<hash>`` of everything the search's results depend on (all sections but
    ``eval`` and ``track``, and the shards' checksum): the same inputs, the same
    experiment (resumed); changed inputs, a fresh one. The trials' resources
    (``tune.gpus_per_trial``, ``tune.cpus_per_trial``, ``tune.driver_cpus``: :data:`RESOURCE_KEYS`) are left out:
    a search resumed on other hardware is the same search."""
    plain = config_to_dict(cfg)
    key = {k: plain[k] for k in ("data", "model", "loss", "train", "tune")}
    key["tune"] = {k: v for k, v in key["tune"].items() if k not in RESOURCE_KEYS}
    key["shards"] = manifest.get("sha256_total")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"tune-{digest[:12]}"


def cpus_needed(cfg: Config) -> float:
    """Logical CPUs for ``tune.max_concurrent`` trials: each trial's driver plus its Train
    workers (:func:`trial_resources`)."""
    return cfg.tune.max_concurrent * trial_resources(cfg)["CPU"]


class WarmupASHA(ASHAScheduler):
    """ASHA whose time is the epochs trained *after* the warm-up (``epoch - warmup_epochs``):
    results during the warm-up never stop a trial nor enter a rung, so the rungs compare
    trials at the recipe's full learning rate. ``max_t`` counts post-warm-up epochs too."""

    def __init__(self, *, warmup_epochs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.warmup_epochs = int(warmup_epochs)

    def _shifted(self, result: dict) -> dict:
        if self._time_attr not in result:
            return result
        return {**result, self._time_attr: result[self._time_attr] - self.warmup_epochs}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        shifted = self._shifted(result)
        if shifted.get(self._time_attr, 1) <= 0:
            return TrialScheduler.CONTINUE  # still warming up
        return super().on_trial_result(tune_controller, trial, shifted)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        shifted = self._shifted(result)
        if shifted.get(self._time_attr, 1) <= 0:  # ended (failed) within the warm-up
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, shifted)


def scheduler(cfg: Config) -> TrialScheduler:
    """``tune.scheduler``: ``asha`` (:class:`WarmupASHA` on :func:`judged_metric`, max, ``epoch`` as
    time counted after ``train.warmup_epochs``) or ``fifo`` (every trial runs to the end)."""
    t = cfg.tune
    if t.scheduler == "fifo":
        return FIFOScheduler()
    return WarmupASHA(warmup_epochs=cfg.train.warmup_epochs, time_attr=TIME_ATTR, metric=judged_metric(cfg),
                      mode="max", max_t=t.epochs, grace_period=t.grace_period,
                      reduction_factor=t.reduction_factor)


def rung_epochs(cfg: Config) -> list[int]:
    """The epochs at which ASHA may stop a trial: ``warmup + grace * rf**k`` for
    ``grace * rf**k < tune.epochs``; none with ``tune.scheduler: fifo``."""
    t = cfg.tune
    if t.scheduler == "fifo":
        return []
    rungs, e = [], t.grace_period
    while e < t.epochs:
        rungs.append(cfg.train.warmup_epochs + e)
        e *= t.reduction_factor
    return rungs
