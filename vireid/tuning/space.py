"""The search's definition: the space of S and T, the trial's config, ASHA, the experiment's name."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import ray
import ray.train
import ray.tune
from ray.tune.schedulers import ASHAScheduler

from vireid.config import Config, config_to_dict, replace

log = logging.getLogger(__name__)


METRIC = "val_mAP"
TIME_ATTR = "epoch"


def trial_config(cfg: Config, memory_size: int, temperature: float) -> Config:
    """``cfg`` with S and T set, ``tune.epochs`` epochs, validation and a checkpoint every
    epoch (ASHA reads ``val_mAP`` each epoch; a restarted trial continues from the last one)."""
    return replace(cfg, model={"memory_size": int(memory_size)},
                   loss={"temperature": float(temperature)},
                   train={"epochs": cfg.tune.epochs, "validate_every": 1, "checkpoint_every": 1})


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
    experiment (resumed); changed inputs, a fresh one."""
    plain = config_to_dict(cfg)
    key = {k: plain[k] for k in ("data", "model", "loss", "train", "tune")}
    key["shards"] = manifest.get("sha256_total")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"tune-{digest[:12]}"


def cpus_needed(cfg: Config, driver_cpus: float = 1.0) -> float:
    """Logical CPUs for ``tune.max_concurrent`` trials: each trial's driver plus its Train
    workers."""
    t = cfg.train
    return cfg.tune.max_concurrent * (driver_cpus + t.num_workers * t.cpus_per_worker)


def asha(cfg: Config) -> ASHAScheduler:
    """ASHA on ``val_mAP`` (max) with ``epoch`` as time, from ``cfg.tune``."""
    t = cfg.tune
    return ASHAScheduler(time_attr=TIME_ATTR, metric=METRIC, mode="max", max_t=t.epochs,
                         grace_period=t.grace_period, reduction_factor=t.reduction_factor)


def rung_epochs(cfg: Config) -> list[int]:
    """The epochs at which ASHA may stop a trial: ``grace * rf**k < tune.epochs``."""
    t = cfg.tune
    rungs, e = [], t.grace_period
    while e < t.epochs:
        rungs.append(e)
        e *= t.reduction_factor
    return rungs
