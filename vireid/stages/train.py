"""DVC stage ``train``: train on Ray Train from the shards; export the selected model.

Reads ``data``, ``model``, ``loss``, ``train`` and ``track`` (where the MLflow run goes).
Writes ``outputs/train/model.pt`` (selected weights + metadata), ``train_summary.json``,
``history.csv`` and ``mlflow_run.json`` (the pipeline's MLflow run, which the later stages
log into). Rank 0 logs every epoch's means and validation to that run as the epoch ends
(``epoch/...``, step = epoch); a rerun after a crash or Ctrl-C continues the same MLflow run
(found by its ``vireid.train_run`` tag), so one training keeps one set of curves. Ray Train keeps its checkpoints under ``<train.storage>/train/<run name>`` (default
``ray_results/train``, outside the DVC outputs; an ``s3://`` URI on a cluster): rerunning the
stage after an interruption continues from the last checkpoint; changed parameters or data
give another run name and start afresh. ``train.ray_address`` says which Ray: empty, a new
local instance; else the cluster to join, whose workers then read the shards staged under
``<train.storage>/shards/`` (:mod:`vireid.data.staging`), not the head's ``data/shards``.
With ``model.pretrained`` the ImageNet weights file (``model.weights_path``, else torchvision's
cached file, downloaded here once when missing) is checked here, before Ray and the MLflow run
start; on a cluster it is staged under ``<train.storage>/weights/<sha256>/`` the same way and
each worker loads its node's copy, verified against that sha256 (on a local Ray the file
itself, verified likewise).
On a cluster of several nodes the MLflow store must be a server every node reaches
(``track.tracking_uri: http://...``). Ctrl-C (which Ray Train turns into an abort of the run)
leaves the outputs as they were and ends with ``error: interrupted (rerun resumes from the
checkpoint of epoch N)``, exit code 130.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vireid.config import Config, config_to_dict
from vireid.data.shards import ShardSet
from vireid.data.staging import file_source, shard_source
from vireid.io import atomic_write_json
from vireid.modeling.backbone import pretrained_file
from vireid.ray_session import ray_storage, storage_location
from vireid.stages.entry import (
    clean_stale_temporaries,
    load_config,
    setup_logging,
    stage_parser,
    weights_only_torch_load,
)
from vireid.tracking import (
    end_run,
    git_commit,
    log_metrics,
    mark_training_done,
    open_training_run,
    resolve_target,
    run_record,
)
from vireid.tracking.store import check_server
from vireid.training.ray_train import ReportLog, fit, run_name

log = logging.getLogger("vireid.stages.train")


def truncated_epoch_warning(cfg: Config, manifest: Mapping[str, Any]) -> str | None:
    """The warning for real data trained on truncated epochs, else None.

    ``train.iters_per_epoch: 0`` is a full pass: ``visible training images // (P * K * workers)``
    batches per worker, as the sampler counts them. A positive value below that on a real
    dataset (the shards' ``data_kind``, written by the prepare stage) trains on a fraction of
    the data every epoch: say which. The synthetic CPU demo truncates on purpose.
    """
    t = cfg.train
    if t.iters_per_epoch == 0 or manifest.get("extra", {}).get("data_kind") != "real":
        return None
    visible = int(manifest["splits"]["train"]["modality"]["visible"])
    per_batch = t.identities_per_batch * t.instances_per_modality
    full = max(1, visible // (per_batch * t.num_workers))
    if t.iters_per_epoch >= full:
        return None
    return (f"train.iters_per_epoch is {t.iters_per_epoch} on real data: an epoch sees "
            f"{t.iters_per_epoch} of the {full} batches of a full pass per worker, "
            f"{100.0 * t.iters_per_epoch / full:.1f} % of the {visible} visible training images "
            f"(P*K = {per_batch} visible per batch, {t.num_workers} worker(s)); "
            "set train.iters_per_epoch: 0 for full epochs (the AGW recipes)")


@contextmanager
def noting_sigint() -> Iterator[list[bool]]:
    """A list that is non-empty once Ctrl-C (SIGINT) arrived in the block, whatever handler
    the block installs: Ray Train installs its own (it aborts the run, then returns or exits
    0), so the SIGINT handlers set in the block are wrapped, and the previous one is back after."""
    seen: list[bool] = []
    real = signal.signal
    previous = signal.getsignal(signal.SIGINT)

    def note(handler: Any) -> Any:
        if not callable(handler):
            return handler

        def noted(signum: int, frame: Any) -> Any:
            seen.append(True)
            return handler(signum, frame)
        return noted

    def patched(signum: int, handler: Any) -> Any:
        return real(signum, note(handler) if signum == signal.SIGINT else handler)

    signal.signal = patched  # type: ignore[assignment]
    try:
        yield seen
    finally:
        signal.signal = real
        if threading.current_thread() is threading.main_thread():
            real(signal.SIGINT, previous)


def resume_hint(reports: Path) -> str:
    """Where a rerun resumes: the last epoch reported with a checkpoint in ``reports``
    (:class:`vireid.training.ray_train.ReportLog`'s lines)."""
    epoch = None
    try:
        lines = reports.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("checkpoint") and isinstance(record.get("epoch"), (int, float)):
            epoch = int(record["epoch"])
    if epoch is None:
        return "rerun resumes from the last checkpoint Ray Train committed, if any"
    return f"rerun resumes from the checkpoint of epoch {epoch}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The stage; every ``torch.load`` in it (and in its Ray workers) is weights-only."""
    with weights_only_torch_load():
        return _main(argv)


def _main(argv: list[str] | None) -> dict[str, Any]:
    parser = stage_parser(__doc__)
    parser.add_argument("--shards", default="data/shards", help="prepared shard directory")
    parser.add_argument("--out", default="outputs/train", help="output directory")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.params)
    check_server(cfg.track.tracking_uri)  # a server that is down: one line now, not minutes of retries
    # fail before Ray and the MLflow run start; the workers load the file staged below
    weights = pretrained_file(cfg.model.arch, cfg.model.weights_path) if cfg.model.pretrained else None
    repo = Path.cwd()
    out = Path(args.out)
    clean_stale_temporaries(*(out / name for name in ("model.pt", "train_summary.json", "history.csv",
                                                      "mlflow_run.json")))
    shards = ShardSet(args.shards)
    shards.verify()  # its hash is recorded as the run's and the model's data hash
    if (warning := truncated_epoch_warning(cfg, shards.manifest)) is not None:
        log.warning("%s", warning)
    target = resolve_target(cfg.track, repo)
    name = run_name(cfg, Path(args.shards))
    run_id, continued = open_training_run(
        target, name, config=config_to_dict(cfg), git_commit=git_commit(repo),
        data_hash=str(shards.manifest.get("sha256_total", "")), dataset=cfg.data.dataset,
        protocol="", run_name="pipeline")
    log.info("MLflow run %s in %s%s", run_id, target.tracking_uri,
             f" (continued: training {name} did not finish there)" if continued else "")
    try:
        storage, filesystem = ray_storage(storage_location(cfg.train.storage, repo, "train"), os.environ)
        shards_at = shard_source(args.shards, cfg.train.ray_address,
                                 *ray_storage(storage_location(cfg.train.storage, repo, "shards"), os.environ))
        weights_at = None if weights is None else file_source(
            weights, cfg.train.ray_address,
            *ray_storage(storage_location(cfg.train.storage, repo, "weights"), os.environ))
        out.mkdir(parents=True, exist_ok=True)
        # fit writes into a staging folder (".model.pt.*.tmp": cleaned up as a leftover of
        # model.pt) whose files replace the outputs only when the run was not interrupted
        staging = Path(tempfile.mkdtemp(prefix=".model.pt.", suffix=".tmp", dir=out)).resolve()
        reports = staging / "reports.jsonl"
        try:
            with noting_sigint() as sigint:
                try:
                    summary = fit(cfg, Path(args.shards), staging, storage, name=name,
                                  storage_filesystem=filesystem,
                                  tracking={"tracking_uri": target.tracking_uri, "run_id": run_id},
                                  shards_at=shards_at, weights_at=weights_at, callbacks=[ReportLog(reports)])
                except (Exception, KeyboardInterrupt, SystemExit) as e:
                    if sigint or isinstance(e, KeyboardInterrupt):
                        raise KeyboardInterrupt(resume_hint(reports)) from e
                    raise
            if sigint:  # Ray Train's own SIGINT handler aborted the run and fit returned
                raise KeyboardInterrupt(resume_hint(reports))
            for output in ("model.pt", "train_summary.json", "history.csv"):
                os.replace(staging / output, out / output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        # the epochs' means and validation went to the run live, from rank 0 (ray_train)
        log_metrics(target.tracking_uri, run_id,
                    {f"selected/{k}": v for k, v in summary["val_metrics"].items()}
                    | {"selected/epoch": float(summary["selected_epoch"]),
                       "train/images_per_s": float(summary["images_per_s"] or 0.0),
                       "train/wall_seconds": float(summary["wall_seconds"])})
    except BaseException:
        end_run(target.tracking_uri, run_id, "FAILED")
        raise
    mark_training_done(target.tracking_uri, run_id)
    end_run(target.tracking_uri, run_id, "FINISHED")
    atomic_write_json(Path(args.out) / "mlflow_run.json", run_record(target, run_id, repo))
    print(f"trained {summary['epochs']} epochs in {summary['wall_seconds']:.0f} s "
          f"({summary['images_per_s']:.1f} images/s); selected epoch {summary['selected_epoch']}: "
          + ", ".join(f"{k}={v:.4f}" for k, v in summary["val_metrics"].items()))
    return summary

