"""train.augment_on_device: the loader ships uint8, the batch is augmented on the device."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch

from vireid.config import Config
from vireid.data.batch_augment import BatchAugment
from vireid.training.checkpoint import CheckpointMismatchError, load_train_state
from vireid.training.epoch import device_augment
from vireid.training.loop import Trainer


def _on_device(cfg: Config) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, augment_on_device=True))


def test_device_augment_epoch_trains_on_uint8_batches(tiny_shards: tuple[Path, Config],
                                                       tmp_path: Path) -> None:
    shards, base = tiny_shards
    cfg = _on_device(base)
    assert device_augment(base) is None
    trainer = Trainer(cfg, shards)
    assert isinstance(trainer.augment, BatchAugment)
    per_image = Trainer(base, shards)
    assert re.fullmatch(r"[0-9a-f]{16}", trainer.fingerprint)
    assert trainer.fingerprint != per_image.fingerprint  # changes the draws: not runtime-only
    # ... so a run with per-image augmentation cannot be resumed with it (and back)
    state = per_image.save_state(tmp_path / "per_image.pt")
    with pytest.raises(CheckpointMismatchError, match="fingerprint"):
        load_train_state(state, **trainer.expected())
    assert load_train_state(state, **per_image.expected())["epoch"] == 0
    # while the runtime-only keys leave it as it is
    runtime = dataclasses.replace(cfg.train, loader_workers=1, checkpoint_every=5, max_failures=0,
                                  cpus_per_worker=2)
    assert Trainer(dataclasses.replace(cfg, train=runtime), shards).fingerprint == trainer.fingerprint

    batch = next(iter(trainer.loader))
    h, w = cfg.data.image_height, cfg.data.image_width
    assert batch["image"].dtype == torch.uint8 and tuple(batch["image"].shape[1:]) == (3, h, w)

    seen: list[torch.Tensor] = []
    augment = trainer.augment

    def recording(x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.device == trainer.device
        out = augment(x)
        seen.append(out)
        return out

    trainer.augment = recording
    steps: list[dict[str, float]] = []
    record = trainer.run_epoch(on_log=lambda rows: steps.extend(terms for _, terms in rows))
    assert len(steps) == cfg.train.iters_per_epoch == len(seen)
    assert all(math.isfinite(v) for terms in steps for v in terms.values())
    assert math.isfinite(record["loss"]) and record["epoch"] == 1
    assert all(x.dtype == torch.float32 and tuple(x.shape[1:]) == (3, h, w) for x in seen)


def test_device_augment_epoch_is_reproducible(tiny_shards: tuple[Path, Config]) -> None:
    """Same seed, same epoch; the draws come from the main process, so whether workers
    decode (loader_workers 0 or 1) does not change them."""
    shards, base = tiny_shards
    cfg = _on_device(base)
    runs = []
    for workers in (0, 1):
        trainer = Trainer(dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, loader_workers=workers)), shards)
        trainer.val_table = None  # training only
        runs.append((trainer.run_epoch()["loss"], trainer.model.state_dict()))
    (loss_a, state_a), (loss_b, state_b) = runs
    assert loss_a == loss_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
