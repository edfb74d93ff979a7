"""Training on Ray Train (V2 API): data-parallel workers, checkpoints, failure recovery.

Each worker runs a :class:`vireid.training.loop.Trainer` with its rank; gradients are
averaged across workers (gloo on CPU), the multi-view memory is all-gathered by the task.
Every epoch all workers call ``ray.train.report(metrics)``; on checkpoint epochs rank 0
attaches a checkpoint directory holding ``train_state.pt``.

Resuming: at start a worker restores ``ray.train.get_checkpoint()`` (set by Ray after a
worker failure, within ``FailureConfig(max_failures)``, and when a run with the same
``storage_path`` and ``name`` is started again: Ray Train V2 reloads the run's checkpoint
manager snapshot from ``storage_path/name``). :func:`fit` names the run after the
training fingerprint, so rerunning an interrupted stage with unchanged parameters and data
continues from the last checkpoint (and a finished one only re-exports its result), while
changed parameters start a fresh run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from vireid.config import Config, ModelConfig, config_from_dict, config_to_dict
from vireid.data.shards import ShardSet
from vireid.data.staging import ShardSource, StagedFile, StagedFileError, local_file, local_shards
from vireid.io import atomic_write_json, atomic_write_text
from vireid.modeling.backbone import PretrainedWeightsError
from vireid.ray_session import alive_nodes, local_gpus, ray_session, storage_location
from vireid.tracking.store import check_reachable_from_nodes
from vireid.training.checkpoint import STATE_FILE, load_train_state, save_model, selected_from_state
from vireid.training.loop import Trainer, check_shards, run_fingerprint, training_summary

log = logging.getLogger(__name__)

#: metrics of a history record that are not reported to Ray (bookkeeping)
_NOT_REPORTED = ("steps", "images")


def _fault_hook(fault: Mapping[str, Any] | None, rank: int, epoch: int) -> Callable[[int], None]:
    """Test hook: kill this worker process during 1-based ``fault["epoch"]`` on ``fault["rank"]``
    after its first step, once (the ``fault["marker"]`` file records that it happened)."""
    if not fault or int(fault["rank"]) != rank or int(fault["epoch"]) != epoch:
        return lambda step: None
    marker = Path(fault["marker"])

    def hook(step: int) -> None:
        if step == 0 and not marker.exists():
            marker.write_text(f"worker rank {rank} killed in epoch {epoch}, pid {os.getpid()}\n")
            log.warning("fault hook: killing worker rank %d (pid %d) in epoch %d", rank, os.getpid(), epoch)
            os._exit(1)

    return hook


class ReportLog(ray.train.UserCallback):
    """Appends every report (rank 0's metrics, whether a checkpoint came with it) to a
    JSON-lines file, across failures and restarts: the record of which epochs actually ran.

    Runs in the Ray Train controller process, so ``path`` must be reachable from it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: ray.train.Checkpoint | None) -> None:
        line = json.dumps({**metrics[0], "checkpoint": checkpoint is not None}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def reported_metrics(record: Mapping[str, Any]) -> dict[str, float | int]:
    """The numeric fields of an epoch record that go to ``ray.train.report``."""
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_REPORTED}


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """An epoch record's numbers as MLflow metrics ``epoch/<name>`` (logged at step = epoch)."""
    return {f"epoch/{k}": float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


def log_epochs(logger: Any, records: Sequence[Mapping[str, Any]], logged: set[int]) -> None:
    """Log the records whose epoch is not in ``logged`` (epochs the run already holds) and
    flush: the epoch curve reaches MLflow as each epoch ends."""
    for record in records:
        epoch = int(record["epoch"])
        if epoch not in logged:
            logger.log(epoch_metrics(record), step=epoch)
            logged.add(epoch)
    logger.flush()


def logged_epochs(tracking_uri: str, run_id: str) -> set[int]:
    """The epochs whose ``epoch/seconds`` the run holds (from an earlier attempt or stage run)."""
    from vireid.tracking.store import client

    return {int(m.step) for m in client(tracking_uri).get_metric_history(run_id, "epoch/seconds")}


def local_pretrained(source: StagedFile, model: ModelConfig, cache_root: str | os.PathLike[str]) -> Path:
    """This node's copy of the ImageNet weights file the driver staged, verified against its
    sha256 (:func:`vireid.data.staging.local_file`; run on a worker, where it is loaded).

    Raises :class:`~vireid.modeling.backbone.PretrainedWeightsError` naming the config key
    (``model.weights_path``, or ``model.pretrained`` for torchvision's file) and the file at fault.
    """
    key = "model.weights_path" if model.weights_path else "model.pretrained"
    try:
        return local_file(source, cache_root)
    except (StagedFileError, OSError) as e:
        raise PretrainedWeightsError(f"{key}: {e}") from e


def train_loop_per_worker(loop_config: dict) -> dict[str, Any] | None:
    """Ray Train worker function: restore, train the remaining epochs, report, checkpoint.

    ``loop_config``: ``config`` (plain dict of :class:`Config`), ``shards`` (a
    :class:`~vireid.data.staging.ShardSource`: read in place or copied to this node),
    ``weights`` (the ImageNet weights file the driver staged, a
    :class:`~vireid.data.staging.StagedFile`, loaded from this node's verified copy; None: the
    model resolves ``model.pretrained`` itself), ``fault`` (test hook or None), ``tracking``
    (``{"tracking_uri", "run_id"}`` or None). Rank 0 returns ``{"epoch", "history"}``.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    cfg = config_from_dict(loop_config["config"])
    shards_dir = local_shards(loop_config["shards"], Path(tempfile.gettempdir()) / "vireid-shards")
    weights_path = None
    if cfg.model.pretrained and loop_config.get("weights") is not None:
        weights_path = str(local_pretrained(loop_config["weights"], cfg.model,
                                            Path(tempfile.gettempdir()) / "vireid-weights"))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.cpus_per_worker)
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    trainer = Trainer(cfg, shards_dir, rank=rank, world_size=world, device=device, weights_path=weights_path)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            path = Path(d) / STATE_FILE
            state = load_train_state(path, **trainer.expected())
            trainer.restore(state, path)
        log.info("rank %d: resumed after epoch %d (attempt %d)", rank, trainer.epoch, trainer.attempt)
    tracking = loop_config.get("tracking")
    steps = None
    logged: set[int] = set()
    if tracking and rank == 0:
        from vireid.tracking import MetricLogger
        from vireid.tracking.store import append_tag
        from vireid.tracking.tags import TAG_RAY_NODES

        steps = MetricLogger(tracking["tracking_uri"], str(tracking["run_id"]))
        append_tag(tracking["tracking_uri"], str(tracking["run_id"]), TAG_RAY_NODES,
                   ray.get_runtime_context().get_node_id())
        # a resumed training: the epochs restored from the checkpoint that this MLflow run lacks
        # (a new run after a finished training, or epochs logged by no attempt)
        logged = logged_epochs(tracking["tracking_uri"], str(tracking["run_id"]))
        log_epochs(steps, trainer.history, logged)
    steps_per_epoch = len(trainer.loader)
    fault = loop_config.get("fault")
    while trainer.epoch < cfg.train.epochs:
        epoch = trainer.epoch + 1
        hook = _fault_hook(fault, rank, epoch)

        def on_log(rows: list[tuple[int, dict[str, float]]], epoch: int = epoch) -> None:
            if steps is not None:  # every loss term of every step, read back once per window
                for i, terms in rows:
                    steps.log({f"step/{k}": v for k, v in terms.items() if not k.startswith(("kdw_", "conf_"))},
                              (epoch - 1) * steps_per_epoch + i)

        record = trainer.run_epoch(on_step=hook, on_log=on_log)
        if steps is not None:  # before the report: the driver sees the epoch in MLflow when it arrives
            log_epochs(steps, [record], logged)
        metrics = reported_metrics(record)
        if trainer.is_checkpoint_epoch(epoch):
            with tempfile.TemporaryDirectory(prefix="vireid-ckpt-") as tmp:
                ckpt = None
                if rank == 0:
                    trainer.save_state(Path(tmp) / STATE_FILE)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt)
                if rank == 0:
                    # reports reach the controller asynchronously: wait until this checkpoint is
                    # committed, so a worker dying right after it cannot lose it
                    ray.train.get_all_reported_checkpoints(
                        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        else:
            ray.train.report(metrics)
    return {"epoch": trainer.epoch, "history": trainer.history} if rank == 0 else None


def build_trainer(
    cfg: Config,
    shards: str | Path | ShardSource,
    storage_path: str | Path,
    name: str,
    *,
    callbacks: Sequence[ray.train.UserCallback] = (),
    fault: dict | None = None,
    tracking: dict | None = None,
    num_to_keep: int = 2,
    storage_filesystem: Any = None,
    weights: StagedFile | None = None,
    gpus_per_worker: float | None = None,
) -> TorchTrainer:
    """A :class:`TorchTrainer` for ``cfg.train``'s layout, persisting to ``storage_path/name``.

    ``storage_path``: a local folder (made absolute: Ray requires it) or a URI
    (:func:`vireid.ray_session.storage_location`); with ``storage_filesystem`` (a pyarrow
    filesystem, :func:`vireid.ray_session.ray_storage`) a path on it. ``fault`` and ``tracking``: see
    :func:`train_loop_per_worker`. ``num_to_keep`` latest checkpoints are kept. ``shards``:
    where the workers read the shard set (a folder is read in place; on a cluster the staged
    set of :func:`vireid.data.staging.shard_source`). ``weights``: the ImageNet weights file
    the workers load (:func:`vireid.data.staging.file_source`; None: each worker resolves
    ``model.pretrained`` itself). ``gpus_per_worker``: each worker's GPUs with ``train.use_gpu``
    (a fraction shares a GPU: a Tune trial's ``tune.gpus_per_trial``); None: one.
    """
    t = cfg.train
    resources: dict[str, float] = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1 if gpus_per_worker is None else gpus_per_worker
    if not isinstance(shards, ShardSource):
        shards = ShardSource(str(Path(shards).resolve()))
    loop_config = {"config": config_to_dict(cfg), "shards": shards, "weights": weights,
                   "fault": dict(fault) if fault else None,
                   "tracking": dict(tracking) if tracking else None}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            storage_path=(str(storage_path) if storage_filesystem is not None
                          else storage_location(str(storage_path), Path.cwd())),
            storage_filesystem=storage_filesystem,
            name=name,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep),
            callbacks=list(callbacks),
        ),
    )


def run_name(cfg: Config, shards_dir: Path) -> str:
    """``train-<fingerprint>``: the same parameters and data give the same run (resumable)."""
    return f"train-{run_fingerprint(cfg, ShardSet(shards_dir).manifest)}"


def write_history_csv(path: Path, history: Sequence[Mapping[str, Any]]) -> Path:
    """One row per epoch, the union of all record keys as columns (``epoch`` first)."""
    keys: list[str] = []
    for r in history:
        keys.extend(k for k in r if k not in keys)
    keys = ["epoch"] + [k for k in keys if k != "epoch"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return atomic_write_text(path, buf.getvalue())


def fit(
    cfg: Config,
    shards_dir: Path,
    out_dir: Path,
    storage_path: str | Path,
    *,
    name: str | None = None,
    callbacks: Sequence[ray.train.UserCallback] = (),
    fault: dict | None = None,
    tracking: dict | None = None,
    object_store_mb: int = 256,
    storage_filesystem: Any = None,
    shards_at: ShardSource | None = None,
    weights_at: StagedFile | None = None,
) -> dict[str, Any]:
    """Train with Ray Train and export the result; return the training summary.

    Runs on the Ray of ``train.ray_address`` (:func:`vireid.ray_session.ray_session`: a new
    local instance of ``num_workers * cpus_per_worker`` CPUs when empty) unless Ray is
    already initialised; checkpoints go to ``storage_path/name`` (a folder or a URI). Writes atomically to ``out_dir``:
    ``model.pt`` (selected weights + metadata), ``train_summary.json`` and ``history.csv``.
    ``name`` defaults to :func:`run_name`, so a rerun resumes instead of starting over.
    ``shards_at``: where the workers read ``shards_dir``'s set (default: the folder itself; on
    a cluster, :func:`vireid.data.staging.shard_source`). ``weights_at``: the ImageNet weights
    file the workers load (:func:`vireid.data.staging.file_source`; None: each resolves
    ``model.pretrained`` itself).
    """
    t = cfg.train
    # a new local instance offers this machine's GPUs (refused when fewer than the workers)
    gpus = 0 if t.ray_address else local_gpus(t.use_gpu, t.num_workers,
                                              torch.cuda.device_count() if t.use_gpu else 0)
    shards_dir, out_dir = Path(shards_dir).resolve(), Path(out_dir)
    check_shards(cfg, ShardSet(shards_dir))  # here, not only in the workers: Ray would retry them
    name = name or run_name(cfg, shards_dir)
    with ray_session(t.ray_address, num_cpus=t.num_workers * t.cpus_per_worker,
                     num_gpus=gpus, object_store_mb=object_store_mb):
        if tracking:
            check_reachable_from_nodes(str(tracking["tracking_uri"]), alive_nodes())
        t0 = time.perf_counter()
        result = build_trainer(cfg, shards_at or shards_dir, storage_path, name, callbacks=callbacks, fault=fault,
                               tracking=tracking, storage_filesystem=storage_filesystem,
                               weights=weights_at).fit()
        wall = time.perf_counter() - t0
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} under {storage_path} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_train_state(Path(d) / STATE_FILE)
    weights, meta = selected_from_state(state)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(out_dir / "model.pt", weights, meta)
    summary = training_summary(state["history"], meta)
    summary.update(run_name=name, run_path=str(result.path), checkpoint_path=result.checkpoint.path,
                   wall_seconds=wall,
                   epochs_completed=int(state["epoch"]), num_workers=cfg.train.num_workers,
                   device="cuda" if cfg.train.use_gpu else "cpu")
    atomic_write_json(out_dir / "train_summary.json", summary)
    write_history_csv(out_dir / "history.csv", state["history"])
    log.info("training %s: selected epoch %s (%s), wrote %s", name, meta.get("selected_epoch"),
             meta.get("selection"), out_dir / "model.pt")
    return summary
