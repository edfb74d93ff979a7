"""Synthetic trees: layout, splits, byte-for-byte determinism, modality properties."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data.conftest import TINY
from vireid.config import ConfigError, SyntheticConfig
from vireid.data.regdb import read_regdb
from vireid.data.synthetic import generate_regdb, generate_sysu, regdb_trial_ids, sysu_split_ids
from vireid.data.sysu import read_sysu


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def test_sysu_layout_and_splits(tiny_sysu_master: Path) -> None:
    root = tiny_sysu_master
    for cam in range(1, 7):
        folders = sorted(p.name for p in (root / f"cam{cam}").iterdir())
        assert folders == [f"{i:04d}" for i in range(1, 13)]
        assert sorted(p.name for p in (root / f"cam{cam}" / "0005").iterdir()) == ["0001.jpg", "0002.jpg"]
    ids = {n: [int(x) for x in (root / "exp" / f"{n}_id.txt").read_text().split(",")] for n in ("train", "val", "test")}
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == list(range(1, 13))
    assert len(ids["test"]) == 8 and len(ids["val"]) == 2 and len(ids["train"]) == 2
    s = read_sysu(root)
    assert len(s.train) == 4 * 6 * 2 and len(s.query) == 8 * 2 * 2 and len(s.gallery) == 8 * 4 * 2
    with Image.open(root / "cam1" / "0001" / "0001.jpg") as im:
        assert im.size == (32, 64) and im.format == "JPEG" and not im.info.get("exif")


def test_default_split_fractions() -> None:
    split = sysu_split_ids(SyntheticConfig())
    assert [len(split[k]) for k in ("train", "val", "test")] == [29, 7, 12]  # 60 / 15 / 25 % of 48
    big = sysu_split_ids(SyntheticConfig(sysu_identities=491, sysu_test_fraction=96 / 491,
                                         sysu_val_fraction=99 / 491))
    assert [len(big[k]) for k in ("train", "val", "test")] == [296, 99, 96]  # SYSU-MM01's official sizes
    with pytest.raises(ConfigError, match="data.synth.sysu_test_fraction"):
        SyntheticConfig(sysu_identities=12, sysu_test_fraction=0.8)


def test_same_seed_same_bytes_other_seed_differs(tiny_sysu_master: Path, tiny_regdb_master: Path,
                                                 tmp_path: Path) -> None:
    again = generate_sysu(tmp_path / "a" / "SYSU-MM01", TINY)
    assert tree_hash(again) == tree_hash(tiny_sysu_master)
    other = generate_sysu(tmp_path / "b" / "SYSU-MM01", SyntheticConfig(**{**TINY.__dict__, "seed": 4}))
    assert tree_hash(other) != tree_hash(tiny_sysu_master)
    assert tree_hash(generate_regdb(tmp_path / "c" / "RegDB", TINY)) == tree_hash(tiny_regdb_master)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["SYSU-MM01"]  # no temp dir left


def test_modalities_visible_colour_infrared_grey(tiny_sysu_master: Path) -> None:
    for cam, grey in ((1, False), (4, False), (3, True), (6, True)):
        arr = np.asarray(Image.open(tiny_sysu_master / f"cam{cam}" / "0002" / "0001.jpg"), dtype=np.float32)
        spread = np.abs(arr - arr.mean(axis=2, keepdims=True)).mean()
        assert (spread < 2.0) if grey else (spread > 5.0), (cam, spread)


def test_identities_differ_across_modalities(tiny_regdb_master: Path) -> None:
    """A co-registered RegDB pair shares the silhouette; different identities do not."""
    def mask(rel: str) -> np.ndarray:
        a = np.asarray(Image.open(tiny_regdb_master / rel).convert("L"), dtype=np.float32)
        return np.abs(a - np.median(a[:, :3])) > 25  # away from the background at the border

    v1, t1 = mask("Visible/1/v_001_01.bmp"), mask("Thermal/1/t_001_01.bmp")
    t2 = mask("Thermal/2/t_002_01.bmp")
    iou = lambda a, b: (a & b).sum() / max(1, (a | b).sum())  # noqa: E731
    assert iou(v1, t1) > iou(v1, t2)


def test_regdb_layout_all_trials(tiny_regdb_master: Path) -> None:
    for trial in range(1, 11):
        s = read_regdb(tiny_regdb_master, trial)
        train_ids = {x.identity for x in s.train}
        test_ids = {x.identity for x in s.test_visible}
        assert train_ids.isdisjoint(test_ids) and len(train_ids) == len(test_ids) == 2
        assert (sorted(train_ids), sorted(test_ids)) == regdb_trial_ids(TINY, trial)
        assert len(s.train) == 2 * 2 * 3 and len(s.test_thermal) == 2 * 3
    assert len({tuple(regdb_trial_ids(SyntheticConfig(), t)[0]) for t in range(1, 11)}) == 10
