"""Shared fixtures of the data-layer tests: reference fixtures, tiny generated trees."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests._fixtures import fixture_absent, fixtures_dir
from vireid.config import SyntheticConfig
from vireid.data.synthetic import generate_regdb, generate_sysu

EVAL_FIXTURES = fixtures_dir() / "eval"

# the smallest valid generated sets: 12 SYSU identities (8 test), 4 RegDB identities, 64x32
TINY = SyntheticConfig(seed=3, sysu_identities=12, sysu_images_per_camera=2, regdb_identities=4,
                       regdb_images_per_modality=3, image_height=64, image_width=32)


@pytest.fixture(scope="session")
def eval_fixtures() -> Path:
    if not EVAL_FIXTURES.is_dir():
        fixture_absent(EVAL_FIXTURES)  # skip; under CI: fail
    return EVAL_FIXTURES


def make_sysu_tree(root: Path, splits: dict[str, Iterable[int]], cams: Iterable[int] = range(1, 7),
                   n: int = 2) -> Path:
    """An empty-file SYSU-MM01 tree: every id of every split in every camera, ``n`` files each."""
    ids = sorted({i for v in splits.values() for i in v})
    for cam in cams:
        for i in ids:
            folder = root / f"cam{cam}" / f"{i:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(1, n + 1):
                (folder / f"{k:04d}.jpg").touch()
    (root / "exp").mkdir(parents=True, exist_ok=True)
    for name, v in splits.items():
        (root / "exp" / f"{name}_id.txt").write_text(",".join(str(i) for i in v))
    return root


@pytest.fixture(scope="session")
def tiny_sysu_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_sysu(tmp_path_factory.mktemp("gen") / "SYSU-MM01", TINY)


@pytest.fixture(scope="session")
def tiny_regdb_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_regdb(tmp_path_factory.mktemp("gen") / "RegDB", TINY)


@pytest.fixture
def tiny_sysu(tiny_sysu_master: Path, tmp_path: Path) -> Path:
    """A private, mutable copy of the tiny generated SYSU-MM01 tree."""
    return Path(shutil.copytree(tiny_sysu_master, tmp_path / "SYSU-MM01"))
