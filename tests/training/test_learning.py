"""A short CPU training run on synthetic data learns: the loss falls, infrared images of the
training identities find their visible images, and the cross-modality mAP on identities it
never saw rises above chance.

Chance is measured, not assumed: the same protocol on random embeddings. With AGW's fixed
10-pixel crop padding at 64x32 (before it was scaled to the image size) this test failed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vireid.config import Config, SyntheticConfig, config_from_dict, config_to_dict
from vireid.data.prepare import prepare
from vireid.data.shards import ShardTable
from vireid.data.synthetic import generate_sysu
from vireid.evaluation.metrics import evaluate_features
from vireid.training.loop import Trainer
from vireid.training.validation import validate

# 40 identities: 8 test, 8 held out (unseen in training), 24 trained on; 3 images per camera
SYNTH = SyntheticConfig(seed=0, sysu_identities=40, sysu_images_per_camera=3, sysu_val_fraction=0.05,
                        sysu_test_fraction=0.2, image_height=64, image_width=32)


def learning_config(root: Path) -> Config:
    """The full method on the tiny backbone: 12 epochs x 15 batches of 6 ids x 4 images x 2."""
    plain = config_to_dict(Config())
    plain["data"].update(dataset="sysu", root=str(root), synthetic=True, synth=config_to_dict(SYNTH),
                         holdout_identities=8, image_height=64, image_width=32)
    plain["model"].update(arch="tiny", pretrained=False, fusion=True, memory=True, memory_size=4)
    plain["loss"].update(distill=True, dynamic=True)
    plain["train"].update(seed=0, epochs=12, iters_per_epoch=15, identities_per_batch=6,
                          instances_per_modality=4, warmup_epochs=2, milestones=[9],
                          validate_every=1, loader_workers=0)
    return config_from_dict(plain)


def cross_modality_map(table: ShardTable, features: np.ndarray) -> float:
    """mAP of infrared queries against the visible gallery of ``table`` (every image): the
    protocol of :func:`validate` (``val_mAP``), here for given features."""
    vis, ir = np.flatnonzero(table.modality == 0), np.flatnonzero(table.modality == 1)
    return evaluate_features(features[ir], features[vis], table.identity[ir], table.identity[vis],
                             table.camera[ir], table.camera[vis], sysu_removal=False,
                             unique_ids_cmc=False).summary()["mAP"]


def model_map(trainer: Trainer, table: ShardTable) -> float:
    """The model's :func:`cross_modality_map` on ``table``, through the loop's own validation."""
    return validate(trainer.model, table, trainer.cfg, trainer.device)["val_mAP"]


def chance(table: ShardTable, draws: int = 20) -> tuple[float, float]:
    """Mean and max of :func:`cross_modality_map` over ``draws`` random embeddings."""
    rng = np.random.default_rng(0)
    maps = [cross_modality_map(table, rng.standard_normal((len(table), 32)).astype(np.float32))
            for _ in range(draws)]
    return float(np.mean(maps)), float(np.max(maps))


@pytest.mark.timeout(600)
def test_short_cpu_run_lowers_loss_and_lifts_cross_modality_map_above_chance(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    cfg = learning_config(tmp_path / "SYSU-MM01")
    generate_sysu(tmp_path / "SYSU-MM01", SYNTH)
    trainer = Trainer(cfg, prepare(cfg.data, tmp_path / "shards"))
    train, val = trainer.train_table, trainer.val_table
    assert val is not None and len(np.unique(val.identity)) == 8
    train_before = model_map(trainer, train)
    train_chance, _ = chance(train)
    val_chance, val_chance_max = chance(val)

    history = [trainer.run_epoch() for _ in range(cfg.train.epochs)]

    losses = [r["loss"] for r in history]
    assert all(np.isfinite(losses)) and losses[-1] < 0.3 * losses[0], losses
    # the epoch records carry the distillation weights and the teachers' confidences
    for key in ("kdw_fuse", "kdw_mem", "conf_student", "conf_fuse", "conf_mem"):
        assert all(0.0 <= r[key] <= 1.0 for r in history), key
    assert history[-1]["conf_student"] > 3 * history[0]["conf_student"]
    # the training identities: an infrared image now finds its identity's visible images
    train_after = model_map(trainer, train)
    assert train_after > 3 * train_chance and train_after > 3 * train_before, (
        train_after, train_chance, train_before)
    # identities never trained on: the selected epoch (best val_mAP) beats every random draw.
    # Only just, at this size (8 unseen identities, 12 short epochs): on this machine best
    # 0.191 against random embeddings' 0.163 mean / 0.175 max, and 18 epochs do not lift it
    # (0.17-0.19 from epoch 5 on); generalisation is measured on make run's benchmark
    # (docs/method.md), not here.
    best = max(r["val_mAP"] for r in history)
    assert best > val_chance_max, (best, val_chance, val_chance_max)
