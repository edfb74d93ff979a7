"""A tiny generated shard set and a search configuration small enough for 2 CPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from vireid.config import Config, SyntheticConfig, config_from_dict, config_to_dict
from vireid.data.prepare import prepare
from vireid.data.synthetic import generate_sysu

SYNTH = SyntheticConfig(seed=5, sysu_identities=16, sysu_images_per_camera=2,
                        sysu_val_fraction=0.15, sysu_test_fraction=0.5, image_height=64, image_width=32)


def tiny_config(root: Path, **tune: object) -> Config:
    """Tiny arch, 64x32 images, P=2 K=2, 3 iterations per epoch, 1 worker of 1 CPU; a search
    of 4 trials x 3 epochs, ASHA rungs at epochs 1 and 2, one trial at a time."""
    plain = config_to_dict(Config())
    plain["data"].update(dataset="sysu", root=str(root), synthetic=True, synth=config_to_dict(SYNTH),
                         holdout_identities=3, image_height=64, image_width=32)
    plain["model"].update(arch="tiny", pretrained=False, memory_size=2)
    plain["train"].update(epochs=3, identities_per_batch=2, instances_per_modality=2, lr=0.05,
                          backbone_lr=0.02, warmup_epochs=0, milestones=[], num_workers=1,
                          cpus_per_worker=1, checkpoint_every=1, validate_every=1, max_failures=0,
                          iters_per_epoch=3)
    plain["tune"].update(num_samples=4, memory_sizes=[1, 2, 4], temperature_min=1.0,
                         temperature_max=8.0, epochs=3, grace_period=1, reduction_factor=2,
                         max_concurrent=1, seed=0)
    plain["tune"].update(tune)
    plain["eval"].update(batch_size=64)
    return config_from_dict(plain)


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A prepared SYSU-layout shard set (with held-out validation identities) and its config."""
    base = tmp_path_factory.mktemp("tune-data")
    root = base / "SYSU-MM01"
    generate_sysu(root, SYNTH)
    cfg = tiny_config(root)
    return prepare(cfg.data, base / "shards"), cfg
