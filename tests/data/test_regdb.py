"""RegDB reader: the reference list-parsing fixture and every validation error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vireid.data.errors import DatasetError
from vireid.data.regdb import read_regdb
from vireid.data.sample import Modality


def _touch_lines(root: Path, list_name: str, lines: list[str]) -> None:
    (root / "idx").mkdir(parents=True, exist_ok=True)
    (root / "idx" / list_name).write_text("\n".join(lines) + "\n")
    for line in lines:
        rel = line.split()[0]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()


def _train_lists(root: Path, trial: int, ids: tuple[int, ...] = (900, 901)) -> None:
    for mod, folder in (("visible", "Visible"), ("thermal", "Thermal")):
        _touch_lines(root, f"train_{mod}_{trial}.txt", [f"{folder}/{i}/{mod}_{k}.bmp {i}" for i in ids for k in (1, 2)])


def test_reference_list_parsing(eval_fixtures: Path, tmp_path: Path) -> None:
    ref = json.loads((eval_fixtures / "regdb_list_parsing.json").read_text())["cases"]
    root = tmp_path / "RegDB"
    trials = sorted({int(name.split("_")[1]) for name in ref})
    for case in ref.values():
        _touch_lines(root, Path(case["list_file"]).name, case["lines"])
    for trial in trials:
        _train_lists(root, trial)
        splits = read_regdb(root, trial)
        assert splits.trial == trial
        for modality, samples, split, camera in (("visible", splits.test_visible, "query", 1),
                                                 ("thermal", splits.test_thermal, "gallery", 2)):
            case = ref[f"{modality}_{trial}"]
            assert [f"<img_dir>/{s.path}" for s in samples] == case["file_image"]
            assert [s.identity for s in samples] == case["file_label"]
            assert {(s.split, s.camera) for s in samples} == {(split, camera)}
        assert {s.modality for s in splits.test_thermal} == {Modality.INFRARED}
        assert [s.path for s in splits.train][:2] == ["Visible/900/visible_1.bmp", "Visible/900/visible_2.bmp"]
        assert len(splits.train) == 8 and {s.split for s in splits.train} == {"train"}


@pytest.fixture
def regdb_root(tmp_path: Path) -> Path:
    root = tmp_path / "RegDB"
    _train_lists(root, 1)
    _touch_lines(root, "test_visible_1.txt", ["Visible/5/a.bmp 5", "Visible/6/b.bmp 6"])
    _touch_lines(root, "test_thermal_1.txt", ["Thermal/5/a.bmp 5", "Thermal/6/b.bmp 6"])
    assert len(read_regdb(root, 1).test_visible) == 2
    return root


def _rewrite(root: Path, name: str, text: str) -> Path:
    path = root / "idx" / name
    path.write_text(text)
    return path


def test_unparsable_lines(regdb_root: Path) -> None:
    path = _rewrite(regdb_root, "test_visible_1.txt", "Visible/5/a.bmp 5\nVisible/6/b.bmp\n")
    with pytest.raises(DatasetError, match=rf"{path}:2: cannot parse 'Visible/6/b.bmp'"):
        read_regdb(regdb_root, 1)
    _rewrite(regdb_root, "test_visible_1.txt", "Visible/5/a.bmp five\n")
    with pytest.raises(DatasetError, match=rf"{path}:1: .*label 'five' is not an integer"):
        read_regdb(regdb_root, 1)


def test_path_outside_root(regdb_root: Path, tmp_path: Path) -> None:
    (tmp_path / "x.bmp").touch()
    path = _rewrite(regdb_root, "test_thermal_1.txt", "Thermal/5/a.bmp 5\n../x.bmp 6\n")
    with pytest.raises(DatasetError, match=rf"{path}:2: path '../x.bmp' is outside the dataset root"):
        read_regdb(regdb_root, 1)
    _rewrite(regdb_root, "test_thermal_1.txt", f"{tmp_path / 'x.bmp'} 6\n")
    with pytest.raises(DatasetError, match=rf"{path}:1: path .* is outside the dataset root"):
        read_regdb(regdb_root, 1)
    os.symlink(tmp_path / "x.bmp", regdb_root / "Thermal" / "6" / "link.bmp")
    _rewrite(regdb_root, "test_thermal_1.txt", "Thermal/6/link.bmp 6\n")
    with pytest.raises(DatasetError, match=rf"{path}:1: .*outside the dataset root"):
        read_regdb(regdb_root, 1)


def test_missing_image_empty_list_missing_list(regdb_root: Path) -> None:
    path = _rewrite(regdb_root, "test_visible_1.txt", "Visible/5/zzz.bmp 5\n")
    with pytest.raises(DatasetError, match=rf"{path}:1: image .*zzz.bmp does not exist"):
        read_regdb(regdb_root, 1)
    _rewrite(regdb_root, "test_visible_1.txt", "\n\n")
    with pytest.raises(DatasetError, match=rf"{path}: split list names no image: empty modality"):
        read_regdb(regdb_root, 1)
    with pytest.raises(DatasetError, match=r"train_visible_2.txt: split list is missing"):
        read_regdb(regdb_root, 2)
    with pytest.raises(ValueError, match="trial: must be in 1..10"):
        read_regdb(regdb_root, 11)


def test_train_test_overlap(regdb_root: Path) -> None:
    (regdb_root / "Thermal" / "900").mkdir(parents=True, exist_ok=True)
    (regdb_root / "Thermal" / "900" / "a.bmp").touch()
    path = _rewrite(regdb_root, "test_thermal_1.txt", "Thermal/900/a.bmp 900\n")
    with pytest.raises(DatasetError, match=rf"{path}: shares identities \[900\]"):
        read_regdb(regdb_root, 1)
