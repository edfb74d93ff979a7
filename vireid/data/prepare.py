"""Read, split and shard a dataset tree (prepare stage): raw tree -> splits -> Arrow shards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vireid.config import DataConfig
from vireid.data.identity import holdout_split
from vireid.data.regdb import read_regdb
from vireid.data.sample import Sample
from vireid.data.shards import write_shards
from vireid.data.sysu import read_sysu


def collect_splits(cfg: DataConfig) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    """Read ``cfg.root`` and split it: ``train`` (minus held-out ids), ``val``, ``query``, ``gallery``.

    Returns the splits and the extra manifest facts (test ids, held-out ids, ...).
    """
    extra: dict[str, Any] = {"holdout_identities": cfg.holdout_identities, "holdout_seed": cfg.holdout_seed,
                             "data_kind": "synthetic" if cfg.synthetic else "real"}
    if cfg.dataset == "sysu":
        sysu = read_sysu(cfg.root, cfg.sysu_train_lists)
        train_all, query, gallery = sysu.train, sysu.query, sysu.gallery
        extra.update(sysu_train_lists=list(cfg.sysu_train_lists), test_ids=list(sysu.test_ids))
    else:
        regdb = read_regdb(cfg.root, cfg.regdb_trial)
        train_all, query, gallery = regdb.train, regdb.test_visible, regdb.test_thermal
    train, val = holdout_split(train_all, cfg.holdout_identities, cfg.holdout_seed)
    extra["val_ids"] = sorted({s.identity for s in val})
    return {"train": train, "val": val, "query": query, "gallery": gallery}, extra


def prepare(cfg: DataConfig, out_dir: str | os.PathLike[str], log_every: int = 1000) -> Path:
    """Read, split and shard the dataset of ``cfg`` into ``out_dir`` (atomically)."""
    splits, extra = collect_splits(cfg)
    return write_shards(
        out_dir, cfg.root, splits, dataset=cfg.dataset, image_size=(cfg.image_height, cfg.image_width),
        jpeg_quality=cfg.jpeg_quality, encoding=cfg.shard_encoding, shard_rows=cfg.shard_rows,
        regdb_trial=cfg.regdb_trial if cfg.dataset == "regdb" else None, extra=extra, log_every=log_every,
    )
