"""Reader of the original SYSU-MM01 layout.

``<root>/cam{1..6}/{0001..0533}/{NNNN}.jpg`` and ``<root>/exp/{train,val,test}_id.txt``
(one line of comma-separated identity numbers). The reader lists files only; images are
decoded (and zero-byte or corrupt ones rejected) when shards are prepared.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vireid.data._paths import IMAGE_SUFFIXES, check_inside, check_root
from vireid.data.errors import DatasetError
from vireid.data.sample import Modality, Sample

log = logging.getLogger(__name__)

VISIBLE_CAMERAS: tuple[int, ...] = (1, 2, 4, 5)
INFRARED_CAMERAS: tuple[int, ...] = (3, 6)
ALL_CAMERAS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
SPLIT_LISTS: tuple[str, ...] = ("train", "val", "test")


def camera_modality(camera: int) -> Modality:
    """SYSU-MM01 camera number -> modality (3 and 6 are infrared)."""
    return Modality.INFRARED if camera in INFRARED_CAMERAS else Modality.VISIBLE


@dataclass(frozen=True)
class SysuSplits:
    """The samples of one SYSU-MM01 tree, by protocol role.

    Order: ``train`` and ``gallery`` are sorted by (camera, identity, filename); ``query``
    follows the reference evaluation (AGW ``process_query_sysu``): identity, then camera
    (3 before 6), then filename, so per-query outputs line up with the reference.
    """

    train: list[Sample]  # split "train": every camera of the train-list identities
    query: list[Sample]  # split "query": cameras 3, 6 of the test identities
    gallery: list[Sample]  # split "gallery": cameras 1, 2, 4, 5 of the test identities (sampler pool)
    test_ids: tuple[int, ...]  # exp/test_id.txt, sorted
    train_ids: tuple[int, ...] = field(default=())  # union of the train lists, sorted


def read_id_list(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """Parse one ``exp/*_id.txt`` file: comma-separated integers (whitespace tolerated)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "split file is missing")
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    if not text:
        raise DatasetError(path, "split file is empty")
    ids: list[int] = []
    for token in text.replace("\n", ",").split(","):
        token = token.strip()
        if not token:
            continue
        try:
            ids.append(int(token))
        except ValueError:
            raise DatasetError(path, f"{token!r} is not an integer identity") from None
    if len(set(ids)) != len(ids):
        raise DatasetError(path, "names an identity more than once")
    return tuple(sorted(ids))


def list_tree(root: str | os.PathLike[str]) -> dict[tuple[int, int], list[str]]:
    """``{(camera, identity): sorted file names}`` of every image folder of the tree.

    Every camera folder must exist; symlinks may not lead outside ``root``. Entries that
    are not 4-digit-style numeric folders or image files are ignored. A camera folder
    without any image, and identity folders without images, are logged as warnings with
    their counts (the protocol silently loses those images otherwise).
    """
    root = check_root(root)
    root_real = Path(os.path.realpath(root))
    index: dict[tuple[int, int], list[str]] = {}
    for cam in ALL_CAMERAS:
        cam_dir = root / f"cam{cam}"
        if not cam_dir.is_dir():
            raise DatasetError(cam_dir, f"camera folder is missing (SYSU-MM01 needs cam1..cam6 under {root})")
        check_inside(root_real, cam_dir, cam_dir)
        with os.scandir(cam_dir) as it:
            id_entries = sorted((e for e in it if e.name.isdigit() and e.is_dir()), key=lambda e: e.name)
        empty: list[str] = []
        for id_entry in id_entries:
            if id_entry.is_symlink():
                check_inside(root_real, Path(id_entry.path), id_entry.path)
            with os.scandir(id_entry.path) as it:
                files = []
                for f in it:
                    if not f.name.lower().endswith(IMAGE_SUFFIXES) or f.name.startswith("."):
                        continue
                    if f.is_symlink():
                        check_inside(root_real, Path(f.path), f.path)
                    if f.is_file():
                        files.append(f.name)
            if files:
                index[(cam, int(id_entry.name))] = sorted(files)
            else:
                empty.append(id_entry.name)
        kind = camera_modality(cam).value
        if len(empty) == len(id_entries):
            log.warning("%s: %s camera folder holds no image (%d identity folders, none with an image): its "
                        "%s images are missing from every split", cam_dir, kind, len(id_entries), kind)
        elif empty:
            shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
            log.warning("%s: %d of %d identity folders hold no image (%s)", cam_dir, len(empty),
                        len(id_entries), shown)
    return index


def _samples(index: dict[tuple[int, int], list[str]], cams: Iterable[int], ids: Iterable[int],
             split: str, identity_major: bool = False) -> list[Sample]:
    cams, ids = list(cams), sorted(ids)
    order = [(c, i) for i in ids for c in cams] if identity_major else [(c, i) for c in cams for i in ids]
    out: list[Sample] = []
    for cam, ident in order:
        for name in index.get((cam, ident), ()):
            out.append(Sample(f"cam{cam}/{ident:04d}/{name}", ident, cam, camera_modality(cam), split))
    return out


def read_sysu(root: str | os.PathLike[str], train_lists: Sequence[str] = ("train", "val")) -> SysuSplits:
    """Read a SYSU-MM01 tree into train / query / gallery samples.

    ``train_lists`` names the ``exp/<name>_id.txt`` files trained on (the community uses
    train+val = 395 identities); it may be empty (a test-only tree).
    Raises :class:`DatasetError` naming the file at fault for a missing camera folder or
    split file, a split file naming identities without images, train/test overlap, or a
    protocol role left without images of a modality.
    """
    root = check_root(root)
    for name in train_lists:
        if name not in ("train", "val"):
            raise ValueError(f"train_lists: unknown list {name!r} (train, val)")
    index = list_tree(root)
    ids_with_images = {ident for (_, ident) in index}

    def checked(name: str) -> tuple[int, ...]:
        path = root / "exp" / f"{name}_id.txt"
        ids = read_id_list(path)
        missing = sorted(set(ids) - ids_with_images)
        if missing:
            shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise DatasetError(path, f"names {len(missing)} identities with no image in any camera: {shown}")
        return ids

    test_path = root / "exp" / "test_id.txt"
    test_ids = checked("test")
    train_ids: set[int] = set()
    for name in train_lists:
        ids = checked(name)
        overlap = sorted(set(ids) & set(test_ids))
        if overlap:
            raise DatasetError(root / "exp" / f"{name}_id.txt",
                               f"shares identities {overlap[:10]} with {test_path}")
        train_ids.update(ids)

    query = _samples(index, INFRARED_CAMERAS, test_ids, "query", identity_major=True)
    gallery = _samples(index, VISIBLE_CAMERAS, test_ids, "gallery")
    if not query:
        raise DatasetError(test_path, "its identities have no infrared image (cam3, cam6): empty query")
    if not gallery:
        raise DatasetError(test_path, "its identities have no visible image (cam1, cam2, cam4, cam5): empty gallery")
    train = _samples(index, ALL_CAMERAS, train_ids, "train")
    if train_lists:
        files = ", ".join(str(root / "exp" / f"{n}_id.txt") for n in train_lists)
        for modality, cams in ((Modality.VISIBLE, VISIBLE_CAMERAS), (Modality.INFRARED, INFRARED_CAMERAS)):
            if not any(s.modality is modality for s in train):
                raise DatasetError(files, f"the train identities have no {modality.value} image "
                                          f"(cameras {', '.join(map(str, cams))}): empty modality")
    log.info("SYSU-MM01 %s: %d train (%d ids), %d query, %d gallery (%d test ids)", root, len(train),
             len(train_ids), len(query), len(gallery), len(test_ids))
    return SysuSplits(train=train, query=query, gallery=gallery, test_ids=test_ids,
                      train_ids=tuple(sorted(train_ids)))
