"""Readers: empty camera folders are warned about with counts (SYSU-MM01); a RegDB list line
whose label disagrees with its identity folder is an error naming file and line."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from vireid.data.errors import DatasetError
from vireid.data.regdb import list_path, read_regdb
from vireid.data.sysu import read_sysu


def test_empty_infrared_folders_are_warned_with_counts(tiny_sysu: Path, caplog: pytest.LogCaptureFixture) -> None:
    cam6 = sorted(p for p in (tiny_sysu / "cam6").iterdir() if p.is_dir())
    for image in cam6[0].iterdir():
        image.unlink()
    for folder in (tiny_sysu / "cam3").iterdir():
        shutil.rmtree(folder)
        folder.mkdir()  # identity folders left, images gone
    with caplog.at_level(logging.WARNING, logger="vireid.data.sysu"):
        splits = read_sysu(tiny_sysu)
    text = caplog.text
    n3 = len(list((tiny_sysu / "cam3").iterdir()))
    assert f"{tiny_sysu / 'cam3'}: infrared camera folder holds no image ({n3} identity folders" in text
    assert f"{tiny_sysu / 'cam6'}: 1 of {len(cam6)} identity folders hold no image ({cam6[0].name})" in text
    assert {s.camera for s in splits.query} == {6}


def test_regdb_label_must_match_its_folder(tiny_regdb_master: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_regdb_master, tmp_path / "RegDB"))
    lst = list_path(root, "test", "thermal", 1)
    lines = lst.read_text().splitlines()
    rel, label = lines[2].split()
    lines[2] = f"{rel} {int(label) + 1}"
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        read_regdb(root, 1)
    assert str(err.value) == (f"{lst}:3: label {int(label) + 1} disagrees with the identity folder of {rel} "
                              f"({label}): the label of a RegDB line is its identity folder")
    assert read_regdb(root, 2).trial == 2  # the other trials' lists are fine
