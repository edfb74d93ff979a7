"""DVC stage ``train``: train on Ray Train from the shards; export the selected model.

Reads ``data``, ``model``, ``loss``, ``train`` and ``track`` (where the MLflow run goes).
Writes ``outputs/train/model.pt`` (selected weights + metadata), ``train_summary.json``,
``history.csv`` and ``mlflow_run.json`` (the pipeline's MLflow run, which the later stages
log into). Ray Train keeps its checkpoints under ``<train.storage>/train/<run name>`` (default
``ray_results/train``, outside the DVC outputs; an ``s3://`` URI on a cluster): rerunning the
stage after an interruption continues from the last checkpoint; changed parameters or data
give another run name and start afresh. ``train.ray_address`` says which Ray: empty, a new
local instance; else the cluster to join, whose workers then read the shards staged under
``<train.storage>/shards/`` (:mod:`vireid.shard_staging`), not the head's ``data/shards``.
On a cluster of several nodes the MLflow store must be a server every node reaches
(``track.tracking_uri: http://...``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from vireid.config import config_to_dict
from vireid.data.shards import ShardSet
from vireid.io import atomic_write_json
from vireid.modeling.backbone import load_pretrained_state
from vireid.ray_session import ray_storage, storage_location
from vireid.shard_staging import shard_source
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
    resolve_target,
    run_record,
    start_pipeline_run,
)
from vireid.tracking.store import check_server
from vireid.training.ray_train import fit

log = logging.getLogger("vireid.stages.train")


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
    if cfg.model.pretrained and cfg.model.weights_path:  # fail before Ray and the MLflow run start
        load_pretrained_state(cfg.model.arch, cfg.model.weights_path)
    repo = Path.cwd()
    out = Path(args.out)
    clean_stale_temporaries(*(out / name for name in ("model.pt", "train_summary.json", "history.csv",
                                                      "mlflow_run.json")))
    shards = ShardSet(args.shards)
    shards.verify()  # its hash is recorded as the run's and the model's data hash
    target = resolve_target(cfg.track, repo)
    run_id = start_pipeline_run(
        target, config=config_to_dict(cfg), git_commit=git_commit(repo),
        data_hash=str(shards.manifest.get("sha256_total", "")), dataset=cfg.data.dataset,
        protocol="", run_name="pipeline")
    log.info("MLflow run %s in %s", run_id, target.tracking_uri)
    try:
        storage, filesystem = ray_storage(storage_location(cfg.train.storage, repo, "train"), os.environ)
        shards_at = shard_source(args.shards, cfg.train.ray_address,
                                 *ray_storage(storage_location(cfg.train.storage, repo, "shards"), os.environ))
        summary = fit(cfg, Path(args.shards), Path(args.out), storage, storage_filesystem=filesystem,
                      tracking={"tracking_uri": target.tracking_uri, "run_id": run_id}, shards_at=shards_at)
        for record in summary["history"]:  # per-epoch means and validation, step = epoch
            log_metrics(target.tracking_uri, run_id,
                        {f"epoch/{k}": float(v) for k, v in record.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"},
                        step=int(record["epoch"]))
        log_metrics(target.tracking_uri, run_id,
                    {f"selected/{k}": v for k, v in summary["val_metrics"].items()}
                    | {"selected/epoch": float(summary["selected_epoch"]),
                       "train/images_per_s": float(summary["images_per_s"] or 0.0),
                       "train/wall_seconds": float(summary["wall_seconds"])})
    except BaseException:
        end_run(target.tracking_uri, run_id, "FAILED")
        raise
    end_run(target.tracking_uri, run_id, "FINISHED")
    atomic_write_json(Path(args.out) / "mlflow_run.json", run_record(target, run_id, repo))
    print(f"trained {summary['epochs']} epochs in {summary['wall_seconds']:.0f} s "
          f"({summary['images_per_s']:.1f} images/s); selected epoch {summary['selected_epoch']}: "
          + ", ".join(f"{k}={v:.4f}" for k, v in summary["val_metrics"].items()))
    return summary

