"""SYSU-MM01 reader: the reference tree fixture, ordering, and every validation error."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import make_sysu_tree
from vireid.data.errors import DatasetError
from vireid.data.sample import Modality
from vireid.data.sysu import read_sysu


@pytest.fixture(scope="module")
def public_tree(eval_fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """Rebuild sysu_tree_public once for the module, with empty files.

    Every file of a test identity is created (10,578); of the other identities' folders
    (which cannot change query or gallery) only the first file. The tree goes to a tmpfs
    (/dev/shm) when there is one: thousands of file creations on a busy disk are slow.
    """
    meta = json.loads((eval_fixtures / "sysu_tree_public.json").read_text())
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="vireid-sysu-", dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) \
        else tmp_path_factory.mktemp("public")
    root = base / "SYSU-MM01"
    test_ids = {f"{i:04d}" for i in meta["test_ids_sorted"]}
    made: set[Path] = set()
    for rel in (eval_fixtures / meta["listing_file"]).read_text().split():
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        elif path.parent.name not in test_ids:
            continue
        if rel == "exp/test_id.txt":
            path.write_text(meta["test_id_txt"])
        else:
            path.touch()
    yield root, meta
    shutil.rmtree(base, ignore_errors=True)


def test_public_tree_query_and_gallery_match_reference(public_tree: tuple[Path, dict],
                                                       eval_fixtures: Path) -> None:
    root, meta = public_tree
    splits = read_sysu(root, train_lists=())
    ref = json.loads((eval_fixtures / "sysu_gallery_sampling_public.json").read_text())
    assert list(splits.test_ids) == meta["test_ids_sorted"]
    assert splits.train == []
    # query: exactly the reference list, in the reference order, with its ids and cameras
    assert [s.path for s in splits.query] == ref["query"]["img"]
    assert [s.identity for s in splits.query] == ref["query"]["pid"]
    assert [s.camera for s in splits.query] == ref["query"]["cam"]
    assert all(s.split == "query" and s.modality is Modality.INFRARED for s in splits.query)
    # gallery pool: every visible image of the test ids, sorted (camera, identity, filename)
    gal = [s.path for s in splits.gallery]
    assert gal == sorted(gal, key=lambda p: (int(p[3]), int(p[5:9]), p))
    assert all(s.split == "gallery" and s.modality is Modality.VISIBLE for s in splits.gallery)
    e2e = np.load(eval_fixtures / "sysu_e2e_public.npz")
    assert sorted(gal + ref["query"]["img"]) == sorted(e2e["image_paths"].tolist())
    # the reference sampler run over our pool reproduces the reference draws
    folders: dict[tuple[int, int], list[str]] = {}
    for s in splits.gallery:
        folders.setdefault((s.identity, s.camera), []).append(s.path)
    for mode, cams in (("all", (1, 2, 4, 5)), ("indoor", (1, 2))):
        for trial in (0, 7):
            random.seed(trial)
            drawn = [random.choice(sorted(folders[(i, c)])) for i in splits.test_ids for c in cams
                     if (i, c) in folders]
            assert drawn == ref["gallery"][mode]["single"][str(trial)]["img"]
        np.random.seed(3)
        multi = [p for i in splits.test_ids for c in cams if (i, c) in folders
                 for p in np.random.choice(sorted(folders[(i, c)]), 10, replace=False)]
        assert multi == ref["gallery"][mode]["multi"]["3"]["img"]


def test_train_split_order_and_fields(tmp_path: Path) -> None:
    root = make_sysu_tree(tmp_path / "S", {"train": [3, 1], "val": [7], "test": [2, 5]}, n=2)
    s = read_sysu(root)
    assert s.train_ids == (1, 3, 7) and s.test_ids == (2, 5)
    keys = [(x.camera, x.identity, x.path) for x in s.train]
    assert keys == sorted(keys) and len(s.train) == 6 * 3 * 2
    assert s.train[0].path == "cam1/0001/0001.jpg" and s.train[0].split == "train"
    assert {x.modality for x in s.train if x.camera in (3, 6)} == {Modality.INFRARED}
    assert [x.path for x in s.query][:3] == ["cam3/0002/0001.jpg", "cam3/0002/0002.jpg", "cam6/0002/0001.jpg"]
    assert len(read_sysu(root, train_lists=("train",)).train) == 6 * 2 * 2


def test_missing_camera_folder(tmp_path: Path) -> None:
    root = make_sysu_tree(tmp_path / "S", {"train": [1], "val": [2], "test": [3]}, cams=(1, 2, 3, 5, 6))
    with pytest.raises(DatasetError, match=r"cam4: camera folder is missing"):
        read_sysu(root)


def test_split_file_naming_ids_without_images(tmp_path: Path) -> None:
    root = make_sysu_tree(tmp_path / "S", {"train": [1], "val": [2], "test": [3]})
    (root / "exp" / "test_id.txt").write_text("3,99")
    with pytest.raises(DatasetError) as err:
        read_sysu(root)
    assert str(root / "exp" / "test_id.txt") in str(err.value) and "99" in str(err.value)


def test_missing_and_malformed_split_files(tmp_path: Path) -> None:
    root = make_sysu_tree(tmp_path / "S", {"train": [1], "test": [3]})
    with pytest.raises(DatasetError, match="val_id.txt: split file is missing"):
        read_sysu(root)
    (root / "exp" / "val_id.txt").write_text("1,x")
    with pytest.raises(DatasetError, match=r"val_id.txt: 'x' is not an integer"):
        read_sysu(root)
    (root / "exp" / "val_id.txt").write_text("3")
    with pytest.raises(DatasetError, match=r"val_id.txt: shares identities \[3\]"):
        read_sysu(root)


def test_empty_modality(tmp_path: Path) -> None:
    root = make_sysu_tree(tmp_path / "S", {"train": [1, 2], "val": [4], "test": [3]})
    for cam in (3, 6):
        for i in (1, 2, 4):
            for f in (root / f"cam{cam}" / f"{i:04d}").iterdir():
                f.unlink()
    with pytest.raises(DatasetError) as err:
        read_sysu(root)
    assert "train_id.txt" in str(err.value) and "no infrared image" in str(err.value)
    for cam in (3, 6):
        for f in (root / f"cam{cam}" / "0003").iterdir():
            f.unlink()
    with pytest.raises(DatasetError, match=r"test_id.txt: .*empty query"):
        read_sysu(root, train_lists=())


def test_symlink_escaping_root(tmp_path: Path) -> None:
    root = make_sysu_tree(tmp_path / "S", {"train": [1], "val": [2], "test": [3]})
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"x")
    link = root / "cam1" / "0001" / "0009.jpg"
    os.symlink(outside, link)
    with pytest.raises(DatasetError) as err:
        read_sysu(root)
    assert str(link) in str(err.value) and "outside the dataset root" in str(err.value)


def test_root_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere: dataset root is not a directory"):
        read_sysu(tmp_path / "nowhere")
