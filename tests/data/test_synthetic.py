"""Synthetic trees: layout, splits, byte-for-byte determinism, modality properties."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data.conftest import TINY
from vireid.config import ConfigError, SyntheticConfig
from vireid.data.regdb import read_regdb
from vireid.data.synthetic import (
    PATTERN,
    UPPER,
    Identity,
    Material,
    Sensor,
    _draw_person,
    _rng,
    generate_regdb,
    generate_sysu,
    make_camera,
    make_identity,
    regdb_cameras,
    regdb_trial_ids,
    render,
    sysu_cameras_of,
    sysu_split_ids,
)
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


def test_regdb_pair_is_co_registered() -> None:
    """The k-th visible and thermal images of a RegDB person share pose and framing: the same
    label map; another identity under the same draw has another silhouette."""
    cams = regdb_cameras(0, 64, 32)
    def labels(ident: int, cam: str) -> np.ndarray:
        look = make_identity(0, 2, ident)
        return _draw_person(look, cams[cam], _rng(0, 3, 2, ident, 1), 64, 32, "front")[0]

    assert np.array_equal(labels(1, "visible") > 0, labels(1, "thermal") > 0)
    other = make_identity(0, 2, 2)
    assert not np.array_equal(labels(1, "thermal") > 0,
                              _draw_person(other, cams["thermal"], _rng(0, 3, 2, 1, 1), 64, 32, "front")[0] > 0)


def _striped(nir_gap: float) -> Identity:
    """Identity with horizontal stripes whose two dyes differ by ``nir_gap`` in NIR and little
    in visible luminance (a grey pair): what only the sensor decides."""
    look = make_identity(0, 1, 1)
    grey = np.full(3, 0.5, np.float32)
    mats = list(look.materials)
    mats[UPPER] = Material(grey, 1.0, 0.0, 0.6)  # NIR 0.5
    mats[PATTERN] = Material(grey * 1.04, 1.0, nir_gap, 0.6)  # NIR 0.52 + gap
    return dataclasses.replace(look, pattern=1, period=0.08, materials=tuple(mats))


def _torso_contrast(img: np.ndarray, labels: np.ndarray) -> float:
    """Mean |difference| between the pattern dye and the plain garment, in grey levels."""
    grey = img.astype(np.float32).mean(axis=2)
    return float(abs(grey[labels == PATTERN].mean() - grey[labels == UPPER].mean()))


def test_nir_keeps_printed_patterns_by_material_thermal_loses_them() -> None:
    """NIR (SYSU cameras 3, 6) is reflected light: a print shows with its dye's NIR factor (two
    dyes alike in visible can differ in NIR); thermal (RegDB) sees heat: the print vanishes."""
    h, w = 128, 64
    nir_cam = dataclasses.replace(make_camera(0, 1, 3, h, w, Sensor.NIR, 2, False), occlusion=0.0,
                                  noise=0.0, blur=0.0, resolution=1.0)
    thermal = dataclasses.replace(regdb_cameras(0, h, w)["thermal"], occlusion=0.0, noise=0.0, blur=0.0,
                                  resolution=1.0)
    vis_cam = dataclasses.replace(make_camera(0, 1, 1, h, w, Sensor.VISIBLE, 1, False), occlusion=0.0,
                                  noise=0.0, blur=0.0, resolution=1.0)
    look = _striped(0.3)
    key = (0, 3, 1, 3, 1, 1)
    labels = _draw_person(look, nir_cam, _rng(*key), h, w, "front")[0]
    assert (labels == PATTERN).sum() > 20 and (labels == UPPER).sum() > 20
    nir_labels = _draw_person(look, nir_cam, _rng(*key), h, w, "front")[0]
    vis_labels = _draw_person(look, vis_cam, _rng(*key), h, w, "front")[0]
    th_labels = _draw_person(look, thermal, _rng(*key), h, w, "front")[0]
    nir = render(look, nir_cam, _rng(*key), h, w, "front")
    vis = render(look, vis_cam, _rng(*key), h, w, "front")
    th = render(look, thermal, _rng(*key), h, w, "front")
    assert _torso_contrast(nir, nir_labels) > 25  # 0.3 of the range, under illumination and shading
    assert _torso_contrast(vis, vis_labels) < 12  # the two dyes look alike in visible light
    assert _torso_contrast(th, th_labels) < 6  # the print does not change the heat
    flat = render(_striped(0.0), nir_cam, _rng(*key), h, w, "front")
    assert _torso_contrast(flat, nir_labels) < 8  # same NIR factor: the print disappears


def test_material_nir_is_a_linear_map_of_luminance() -> None:
    m = Material(np.asarray([0.2, 0.4, 0.6], np.float32), 1.5, 0.1, 0.5)
    lum = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6
    assert m.nir == pytest.approx(1.5 * lum + 0.1, abs=1e-6)
    assert Material(np.ones(3, np.float32), 2.0, 0.5, 0.5).nir == 1.0  # clipped
    # a dark dye that is bright in NIR exists among the generated identities
    mats = [mat for i in range(1, 60) for mat in make_identity(0, 1, i).materials[2:5]]
    assert any(float(np.mean(m.rgb)) < 0.25 and m.nir > 0.45 for m in mats)


def test_camera_presence(tmp_path: Path) -> None:
    """Each identity appears in a camera with the given probability, always in at least one
    visible and one infrared camera; the folders match :func:`sysu_cameras_of`."""
    cfg = SyntheticConfig(seed=1, sysu_identities=40, sysu_images_per_camera=1, sysu_camera_presence=0.5,
                          image_height=32, image_width=16)
    cams = {i: sysu_cameras_of(cfg, i) for i in range(1, 41)}
    assert all({3, 6} & set(c) and {1, 2, 4, 5} & set(c) for c in cams.values())
    assert sum(len(c) for c in cams.values()) < 0.8 * 6 * 40  # some cameras miss some people
    root = generate_sysu(tmp_path / "SYSU-MM01", cfg)
    for i, c in cams.items():
        assert [k for k in range(1, 7) if (root / f"cam{k}" / f"{i:04d}").is_dir()] == sorted(c)
    assert all(len(sysu_cameras_of(SyntheticConfig(), i)) == 6 for i in range(1, 20))  # presence 1
    with pytest.raises(ConfigError, match="data.synth.sysu_camera_presence"):
        SyntheticConfig(sysu_camera_presence=0.0)


def test_regdb_layout_all_trials(tiny_regdb_master: Path) -> None:
    for trial in range(1, 11):
        s = read_regdb(tiny_regdb_master, trial)
        train_ids = {x.identity for x in s.train}
        test_ids = {x.identity for x in s.test_visible}
        assert train_ids.isdisjoint(test_ids) and len(train_ids) == len(test_ids) == 2
        assert (sorted(train_ids), sorted(test_ids)) == regdb_trial_ids(TINY, trial)
        assert len(s.train) == 2 * 2 * 3 and len(s.test_thermal) == 2 * 3
    assert len({tuple(regdb_trial_ids(SyntheticConfig(), t)[0]) for t in range(1, 11)}) == 10
