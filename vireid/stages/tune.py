"""DVC stage ``tune``: Ray Tune search over the memory size S and the temperature T.

Reads ``tune`` (the search), and ``data``, ``model``, ``loss``, ``train`` (each trial is the
train stage's Ray Train run with S, T and ``tune.epochs`` replaced) and ``track`` (MLflow:
a parent run, one child run per trial). Writes ``outputs/tune/best_params.yaml``
(``{model: {memory_size: S}, loss: {temperature: T}}``), ``summary.json`` and ``tune.png``.

The Tune experiment lives under ``<train.storage>/tune`` (default ``ray_results/tune``,
outside the DVC outputs; an ``s3://`` URI on a cluster) and is named after the search's
inputs: rerunning an interrupted stage resumes it (finished trials are not run again);
changed parameters or data start a fresh one. With ``train.ray_address`` set the stage joins
that cluster (its workers read the shards staged under ``<train.storage>/shards/`` and the
ImageNet weights staged under ``<train.storage>/weights/``, as in the train stage);
otherwise it starts a local Ray with the CPUs that ``tune.max_concurrent`` trials need.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from vireid.data.staging import file_source, shard_source
from vireid.modeling.backbone import pretrained_file
from vireid.ray_session import ray_storage, storage_location
from vireid.stages.entry import (
    clean_stale_temporaries,
    load_config,
    setup_logging,
    stage_parser,
    weights_only_torch_load,
)
from vireid.tracking import resolve_target
from vireid.tracking.store import check_server
from vireid.tuning import run_search

log = logging.getLogger("vireid.stages.tune")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The stage; every ``torch.load`` in it (and in its Ray workers) is weights-only."""
    with weights_only_torch_load():
        return _main(argv)


def _main(argv: list[str] | None) -> dict[str, Any]:
    parser = stage_parser(__doc__)
    parser.add_argument("--shards", default="data/shards", help="prepared shard directory")
    parser.add_argument("--out", default="outputs/tune", help="output directory")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.params)
    check_server(cfg.track.tracking_uri)
    # fail before Ray starts; the trials' workers load the file staged below
    weights = pretrained_file(cfg.model.arch, cfg.model.weights_path) if cfg.model.pretrained else None
    clean_stale_temporaries(*(Path(args.out) / name for name in ("best_params.yaml", "summary.json", "tune.png")))
    storage, filesystem = ray_storage(storage_location(cfg.train.storage, Path.cwd(), "tune"), os.environ)
    shards_at = shard_source(args.shards, cfg.train.ray_address,
                             *ray_storage(storage_location(cfg.train.storage, Path.cwd(), "shards"), os.environ))
    weights_at = None if weights is None else file_source(
        weights, cfg.train.ray_address,
        *ray_storage(storage_location(cfg.train.storage, Path.cwd(), "weights"), os.environ))
    summary = run_search(cfg, Path(args.shards), storage, Path(args.out), storage_filesystem=filesystem,
                         tracking=resolve_target(cfg.track, Path.cwd()),
                         shards_at=shards_at, weights_at=weights_at)
    best = summary["best"]
    log.info("tune: %d trials, %d stopped early by ASHA, %d of %d trial-epochs used; best S=%s "
             "T=%.4g (val_mAP %.4f)", summary["num_trials"], summary["num_early_stopped"],
             summary["trial_epochs_used"], summary["trial_epochs_full"], best["memory_size"],
             best["temperature"], best["val_mAP"])
    return summary

