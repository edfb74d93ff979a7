"""Tiny generated shard sets, configs and trained models for the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from vireid.config import Config, SyntheticConfig, config_from_dict, config_to_dict
from vireid.data.prepare import prepare
from vireid.data.synthetic import generate_regdb, generate_sysu

SYNTH = SyntheticConfig(seed=3, sysu_identities=16, sysu_images_per_camera=2,
                        sysu_val_fraction=0.15, sysu_test_fraction=0.5, image_height=64, image_width=32)


def tiny_config(root: Path, **train: object) -> Config:
    """A CPU config: tiny arch, 64x32 images, P=2, K=2, 2 epochs, 2 held-out identities."""
    plain = config_to_dict(Config())
    plain["data"].update(dataset="sysu", root=str(root), synthetic=True, synth=config_to_dict(SYNTH),
                         holdout_identities=2, image_height=64, image_width=32)
    plain["model"].update(arch="tiny", pretrained=False, memory_size=2)
    plain["train"].update(epochs=2, identities_per_batch=2, instances_per_modality=2, lr=0.05,
                          backbone_lr=0.01, warmup_epochs=1, milestones=[1], num_workers=1,
                          cpus_per_worker=1, checkpoint_every=1, validate_every=1, max_failures=1,
                          iters_per_epoch=3)
    plain["train"].update(train)
    return config_from_dict(plain)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A prepared SYSU-layout shard set: 8 training identities (6 train + 2 held out)."""
    base = tmp_path_factory.mktemp("tiny")
    root = base / "SYSU-MM01"
    generate_sysu(root, SYNTH)
    cfg = tiny_config(root)
    shards = prepare(cfg.data, base / "shards")
    return shards, cfg


@pytest.fixture(scope="session")
def model_file(tiny_shards: tuple[Path, Config], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.pt`` of one epoch of training on :func:`tiny_shards` (no Ray)."""
    from vireid.training.loop import Trainer

    shards, cfg = tiny_shards
    trainer = Trainer(cfg, shards)
    trainer.run_epoch()
    return trainer.save_model(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="session")
def tiny_regdb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """Shards of a generated RegDB tree (8 identities, trial 1: 3 trained + 1 held out, 4 test)
    and their config: those of tests/tracking/test_provenance.py."""
    from tests.tracking.test_provenance import SYNTH as REGDB_SYNTH
    from tests.tracking.test_provenance import regdb_config

    base = tmp_path_factory.mktemp("tiny-regdb")
    generate_regdb(base / "RegDB", REGDB_SYNTH)
    cfg = regdb_config(base / "RegDB")
    return prepare(cfg.data, base / "shards"), cfg


@pytest.fixture(scope="session")
def regdb_model_file(tiny_regdb: tuple[Path, Config], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.pt`` of one epoch on :func:`tiny_regdb` (test_provenance's training, no Ray)."""
    from tests.tracking.test_provenance import train

    shards, cfg = tiny_regdb
    return train(cfg, shards, tmp_path_factory.mktemp("regdb-model") / "model.pt")
