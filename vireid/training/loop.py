"""The Trainer: one rank's epochs (step, validation, selection, state), with or without Ray.

The epoch itself is :mod:`vireid.training.epoch` (loader, step, read-backs), validation on
the held-out identities :mod:`vireid.training.validation`; :class:`Trainer` ties them into
epochs with model selection and checkpointable state. Under Ray Train
(:mod:`vireid.training.ray_train`) each worker runs a ``Trainer`` with its rank; without Ray
it runs with ``rank=0, world_size=1``.

Determinism: all randomness of epoch ``e`` on rank ``r`` (augmentation, DataLoader worker
seeds) comes from :func:`epoch_seed` ``(seed, e, r)`` and the sampler's draw from
``(seed, e)``; model initialisation from ``seed``. No RNG state needs saving, and a run
resumed from a checkpoint after epoch ``e`` continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vireid.config import Config, config_to_dict
from vireid.data.shards import ShardSet, ShardTable
from vireid.distributed import average_batchnorm_stats, is_distributed
from vireid.evaluation.provenance import ShardMismatchError
from vireid.modeling import ReIDTask, VIReIDModel
from vireid.modeling.speed import compile_for_speed
from vireid.training.checkpoint import (
    CheckpointMismatchError,
    cpu_state_dict,
    make_meta,
    restore_train_state,
    save_model,
    save_train_state,
    selected_from_state,
)
from vireid.training.epoch import (
    LogCallback,
    StepCallback,
    build_train_loader,
    device_augment,
    train_one_epoch,
)
from vireid.training.runtime import resolve_runtime
from vireid.training.schedule import batch_plan, build_optimizer, build_scheduler
from vireid.training.validation import VAL_PROTOCOL, validate

log = logging.getLogger(__name__)

# config keys that do not change what is trained (excluded from the run fingerprint)
# (memory_format and compile: the same arithmetic in another layout / as generated kernels)
_RUNTIME_KEYS = ("max_failures", "checkpoint_every", "loader_workers", "cpus_per_worker", "log_every",
                 "memory_format", "compile", "ray_address", "storage")
# the data keys training reads (the data itself enters the fingerprint as the shards' hash)
_DATA_KEYS = ("dataset", "regdb_trial", "image_height", "image_width")


# ---------------------------------------------------------------------------------------
# seeds and fingerprints


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 63-bit seed for epoch ``epoch`` (0-based) on ``rank``, derived from ``seed``."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_fingerprint(cfg: Config, shards_manifest: Mapping[str, Any]) -> str:
    """A short hash of everything that decides the trained weights.

    Covers the data keys training reads, the ``model``, ``loss`` and ``train`` sections (minus
    runtime-only keys: retries, checkpoint interval, loader processes, CPUs per worker) and
    the shard contents (``sha256_total`` of the manifest).
    Two runs with the same fingerprint produce the same weights, so one may resume the other.
    """
    plain = config_to_dict(cfg)
    train = {k: v for k, v in plain["train"].items() if k not in _RUNTIME_KEYS}
    data = {k: plain["data"][k] for k in _DATA_KEYS}
    key = {"data": data, "model": plain["model"], "loss": plain["loss"], "train": train,
           "shards": shards_manifest.get("sha256_total")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# building blocks


def check_shards(cfg: Config, shards: ShardSet) -> None:
    """Refuse shards prepared for another dataset, trial or image size than ``cfg.data``."""
    m = shards.manifest
    path = shards.dir / "manifest.json"
    wanted = {"dataset": cfg.data.dataset, "image_height": cfg.data.image_height,
              "image_width": cfg.data.image_width,
              "regdb_trial": cfg.data.regdb_trial if cfg.data.dataset == "regdb" else None}
    for key, value in wanted.items():
        if m.get(key) != value:
            raise ShardMismatchError(f"shards {path}: {key} is {m.get(key)!r} but data.{key} is "
                                     f"{value!r}; rerun the prepare stage")


def late_terms_epoch(cfg: Config) -> int:
    """0-based epoch from which ``kd`` and ``infer`` are computed: ``loss.distill_start`` of
    ``train.epochs``, rounded up (0: from the first step)."""
    return math.ceil(cfg.loss.distill_start * cfg.train.epochs - 1e-9)


def c_compiler_found(environ: Mapping[str, str], which: Callable[[str], str | None] = shutil.which) -> bool:
    """Whether a C compiler runs here: ``$CC`` when set (Triton uses it as given), else cc,
    gcc or clang on the PATH."""
    cc = environ.get("CC", "").strip()
    names = [cc] if cc else ["cc", "gcc", "clang"]
    return any(which(n) is not None for n in names)


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA device of compute capability 8.0+
    (True elsewhere: not asked of other devices)."""
    if device.type != "cuda":
        return True
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def build_model(cfg: Config, num_classes: int, weights_path: str | None = None) -> VIReIDModel:
    """The network, initialised from ``cfg.train.seed`` (identical on every rank).

    ``weights_path``: the local ImageNet file to start from instead of ``cfg.model``'s (a Ray
    worker's verified copy of the file the driver staged, :func:`vireid.data.staging.local_file`).
    """
    seed_everything(int(cfg.train.seed))
    model_cfg = cfg.model if weights_path is None else dataclasses.replace(cfg.model, weights_path=weights_path)
    return VIReIDModel(model_cfg, num_classes)


# ---------------------------------------------------------------------------------------
# the trainer


@dataclasses.dataclass
class Best:
    """The selected epoch so far: 1-based ``epoch``, its validation ``metrics`` and weights."""

    epoch: int
    metrics: dict[str, float]
    model: dict[str, torch.Tensor]


class Trainer:
    """One rank's training run: model, task, optimiser, schedule, loader, history, selection.

    ``epoch`` counts completed epochs. :meth:`run_epoch` trains the next one, validates on
    validation epochs (rank 0; every ``validate_every`` epochs and the last one) and keeps
    the best validation mAP epoch's weights (the last epoch when there is no ``val`` split).
    ``data_parallel``: wrap the task in DistributedDataParallel (None: when a process group of
    more than one rank is initialised; True also with one rank, to measure DDP's cost).
    ``weights_path``: see :func:`build_model` (the run's config, and so its fingerprint, keeps
    ``model.weights_path`` as the driver had it).
    """

    def __init__(self, cfg: Config, shards_dir: str | Path, *, rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu", data_parallel: bool | None = None,
                 weights_path: str | None = None) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = torch.device(device)
        self.shards = ShardSet(shards_dir)
        check_shards(cfg, self.shards)
        self.fingerprint = run_fingerprint(cfg, self.shards.manifest)
        self.num_classes = self.shards.num_classes
        self.train_table = self.shards.table("train")
        self.val_table: ShardTable | None = None
        if "val" in self.shards.split_names and len(self.shards.table("val")) > 0:
            self.val_table = self.shards.table("val")
        self.runtime = resolve_runtime(cfg.train, self.device, has_c_compiler=c_compiler_found(os.environ),
                                       bf16_native=bf16_native(self.device))
        self.runtime.apply()
        if rank == 0:
            for note in self.runtime.notes:
                log.warning("%s", note)
        self.model = build_model(cfg, self.num_classes, weights_path).to(self.device)
        if self.runtime.channels_last or self.runtime.compile_regions:
            compile_for_speed(self.model, channels_last=self.runtime.channels_last,
                              compile_regions=self.runtime.compile_regions)
        self.task = ReIDTask(self.model, cfg.loss,
                             rows_per_rank=2 * cfg.train.identities_per_batch * cfg.train.instances_per_modality)
        # data-parallel: DDP averages the gradients during backward; buffers are not
        # broadcast (the memory is written with every rank's features, BatchNorm statistics
        # are averaged after each epoch)
        self.forward: nn.Module = self.task
        if is_distributed() if data_parallel is None else data_parallel:
            self.forward = DistributedDataParallel(
                self.task, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False)
        self.optimizer = build_optimizer(self.model, cfg.train, world_size)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.loader, self.sampler = build_train_loader(self.train_table, cfg, rank, world_size)
        if rank == 0:
            log.info("%s", batch_plan(cfg.train, world_size, len(self.loader)))
        self.augment = device_augment(cfg)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: Best | None = None
        self.attempt = 0  # how many times this run was restored from a checkpoint

    # -- selection and metadata ---------------------------------------------------------

    @property
    def selection(self) -> str:
        """How the selected epoch is chosen, in words (for outputs)."""
        if self.val_table is None:
            return ("last epoch: no held-out identities (data.holdout_identities = 0), "
                    "so no validation and no selection")
        return f"best val_mAP (infrared query -> visible gallery) over validated epochs; {VAL_PROTOCOL}"

    def is_validation_epoch(self, epoch: int) -> bool:
        """Whether 1-based ``epoch`` is validated (every ``validate_every`` and the last)."""
        return self.val_table is not None and (
            epoch % self.cfg.train.validate_every == 0 or epoch == self.cfg.train.epochs)

    def is_checkpoint_epoch(self, epoch: int) -> bool:
        """Whether 1-based ``epoch`` ends with a checkpoint (every ``checkpoint_every`` and the last)."""
        return epoch % self.cfg.train.checkpoint_every == 0 or epoch == self.cfg.train.epochs

    def expected(self) -> dict[str, Any]:
        """The fields a checkpoint must match to be loaded into this run."""
        m = self.shards.manifest
        return {"arch": self.cfg.model.arch, "dataset": m["dataset"], "regdb_trial": m.get("regdb_trial"),
                "num_classes": self.num_classes, "feat_dim": int(self.model.feat_dim),
                "image_height": int(m["image_height"]), "image_width": int(m["image_width"]),
                "fingerprint": self.fingerprint}

    def meta(self) -> dict[str, Any]:
        """Checkpoint metadata for the current selection."""
        m = self.shards.manifest
        best = self.best
        meta = make_meta(
            arch=self.cfg.model.arch, num_classes=self.num_classes, feat_dim=int(self.model.feat_dim),
            dataset=m["dataset"], regdb_trial=m.get("regdb_trial"), image_height=m["image_height"],
            image_width=m["image_width"], identity_map=m["identity_maps"]["train"],
            config=config_to_dict(self.cfg), selected_epoch=None if best is None else best.epoch,
            selection=self.selection, val_metrics=None if best is None else best.metrics)
        meta["fingerprint"] = self.fingerprint
        meta["shards_sha256"] = m.get("sha256_total")
        return meta

    # -- epochs -------------------------------------------------------------------------

    def run_epoch(self, on_step: StepCallback | None = None, on_log: LogCallback | None = None) -> dict[str, Any]:
        """Train epoch ``self.epoch + 1`` (and validate it when due); return its record.

        ``on_step``/``on_log``: see :func:`train_one_epoch`."""
        e = self.epoch  # 0-based index of the epoch to run
        seed_everything(epoch_seed(self.cfg.train.seed, e, self.rank))
        self.sampler.set_epoch(e)
        self.task.late_terms = e >= late_terms_epoch(self.cfg)
        lrs = {g.get("name", str(k)): g["lr"] for k, g in enumerate(self.optimizer.param_groups)}
        stats = train_one_epoch(self.task, self.loader, self.optimizer, epoch=e, device=self.device,
                                runtime=self.runtime, forward=self.forward, on_step=on_step,
                                on_log=on_log, log_every=self.cfg.train.log_every, augment=self.augment)
        self.scheduler.step()
        average_batchnorm_stats(self.model)
        self.epoch = e + 1
        record: dict[str, Any] = {"epoch": self.epoch, "attempt": self.attempt,
                                  **{f"lr_{k}": v for k, v in lrs.items()}, **stats}
        if self.is_validation_epoch(self.epoch):  # every rank extracts its share; rank 0 scores
            t0 = time.perf_counter()
            metrics = validate(self.model, self.val_table, self.cfg, self.device)
            if self.rank == 0:
                record.update(metrics, val_seconds=time.perf_counter() - t0)
                record[VAL_MEAN] = running_val_mean(self.history, metrics["val_mAP"], self.epoch,
                                                    self.cfg.train.warmup_epochs)
                if self.best is None or metrics["val_mAP"] > self.best.metrics["val_mAP"]:
                    self.best = Best(self.epoch, metrics, cpu_state_dict(self.model))
        log.info("epoch %d/%d done: %s", self.epoch, self.cfg.train.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
        self.history.append(record)
        return record

    def selected(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The selected weights and their metadata (the last epoch's without validation)."""
        best = None if self.best is None else {"epoch": self.best.epoch, "metrics": self.best.metrics,
                                               "model": self.best.model}
        return selected_from_state({"meta": self.meta(), "best": best, "epoch": self.epoch,
                                    "model": None if best else cpu_state_dict(self.model)})

    # -- state --------------------------------------------------------------------------

    def save_state(self, path: str | Path) -> Path:
        """Write the training state (see :mod:`vireid.training.checkpoint`)."""
        best = None if self.best is None else {
            "epoch": self.best.epoch, "metrics": self.best.metrics, "model": self.best.model}
        return save_train_state(
            path, meta=self.meta(), model=self.model, optimizer=self.optimizer,
            scheduler=self.scheduler, epoch=self.epoch,
            sampler={"seed": self.cfg.train.seed, "epoch": self.epoch}, history=self.history, best=best)

    def restore(self, state: Mapping[str, Any], path: str | Path = "<state>") -> None:
        """Continue from a loaded training state (fields already checked by the loader)."""
        if state["sampler"]["seed"] != self.cfg.train.seed:
            raise CheckpointMismatchError(path, "train.seed", state["sampler"]["seed"], self.cfg.train.seed)
        self.epoch = restore_train_state(state, self.model, self.optimizer, self.scheduler)
        self.sampler.set_epoch(self.epoch)
        self.history = [dict(r) for r in state["history"]]
        self.best = None if state["best"] is None else Best(**state["best"])
        self.attempt = 1 + max((int(r.get("attempt", 0)) for r in self.history), default=-1)

    def save_model(self, path: str | Path) -> Path:
        """Write the selected weights and metadata as a model file."""
        weights, meta = self.selected()
        return save_model(path, weights, meta)


#: the running mean of ``val_mAP`` over the validated epochs after the warm-up (a trial's
#: judgment in the tune stage, ``tune.metric``: less seed noise than the last epoch's figure,
#: docs/tuning.md "Is the search signal above the noise?")
VAL_MEAN = "val_mAP_mean"


def running_val_mean(history: list[dict[str, Any]], val_map: float, epoch: int, warmup_epochs: int) -> float:
    """Mean ``val_mAP`` of the validated epochs in ``history`` and of 1-based ``epoch`` (its
    ``val_mAP``) counted from the first epoch after the warm-up; during the warm-up, of the
    warm-up epochs so far (Tune wants the judged metric in every result; ASHA skips those)."""
    start = warmup_epochs if epoch > warmup_epochs else 0
    values = [float(r["val_mAP"]) for r in history if "val_mAP" in r and start < int(r["epoch"]) < epoch]
    return (sum(values) + float(val_map)) / (len(values) + 1)


def training_summary(history: list[dict[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``train_summary.json`` content from a run's history and its model metadata."""
    total_s = sum(float(r.get("seconds", 0.0)) + float(r.get("val_seconds", 0.0)) for r in history)
    images = sum(float(r.get("images", 0.0)) for r in history)
    train_s = sum(float(r.get("seconds", 0.0)) for r in history)
    return {
        "epochs": len(history),
        "selected_epoch": meta.get("selected_epoch"),
        "selection": meta.get("selection"),
        "val_metrics": dict(meta.get("val_metrics") or {}),
        "val_protocol": VAL_PROTOCOL,
        "train_seconds": train_s,
        "epoch_seconds_total": total_s,
        "images_per_s": images / train_s if train_s > 0 else None,
        "attempts": 1 + max((int(r.get("attempt", 0)) for r in history), default=0),
        "history": history,
    }
