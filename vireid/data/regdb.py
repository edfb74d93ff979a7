"""Reader of the RegDB split lists ``<root>/idx/{train,test}_{visible,thermal}_{trial}.txt``.

Each line is ``<relative path> <integer label>``. RegDB camera numbers: 1 visible, 2
thermal. The label of a line is the sample's identity and must equal its identity folder
(``Visible/<id>/...``; a disagreeing line is an error naming file and line). Files are checked to exist and to
stay inside the root; decoding (and rejecting bad images) happens at prepare time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vireid.config import REGDB_TRIALS
from vireid.data._paths import check_inside, check_root, relative_posix
from vireid.data.errors import DatasetError
from vireid.data.sample import Modality, Sample

log = logging.getLogger(__name__)

VISIBLE_CAMERA = 1
THERMAL_CAMERA = 2


@dataclass(frozen=True)
class RegDBSplits:
    """One RegDB trial. Order: list-file order (train: visible lines, then thermal lines)."""

    train: list[Sample]  # split "train", both modalities
    test_visible: list[Sample]  # split "query" (visible-to-thermal direction's query)
    test_thermal: list[Sample]  # split "gallery"
    trial: int  # 1..10


def list_path(root: str | os.PathLike[str], part: str, modality: str, trial: int) -> Path:
    """``<root>/idx/<part>_<modality>_<trial>.txt``."""
    return Path(root) / "idx" / f"{part}_{modality}_{trial}.txt"


def read_list(root: str | os.PathLike[str], list_file: str | os.PathLike[str],
              check_files: bool = True) -> list[tuple[str, int]]:
    """Parse one idx list file into ``(relative path, label)`` pairs, in file order.

    Blank lines are skipped. With ``check_files`` every image must exist as a file inside
    ``root`` (symlinks are followed and must not leave it).
    """
    root = Path(root)
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DatasetError(list_file, "split list is missing")
    root_real = Path(os.path.realpath(root))
    out: list[tuple[str, int]] = []
    text = list_file.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{list_file}:{lineno}"
        if len(parts) != 2:
            raise DatasetError(where, f"cannot parse {line!r}: expected '<relative path> <integer label>'")
        try:
            label = int(parts[1])
        except ValueError:
            raise DatasetError(where, f"cannot parse {line!r}: label {parts[1]!r} is not an integer") from None
        rel = relative_posix(parts[0], where)
        folder = PurePosixPath(rel).parent.name
        if folder.isdigit() and int(folder) != label:
            raise DatasetError(where, f"label {label} disagrees with the identity folder of {rel} ({folder}): "
                                      "the label of a RegDB line is its identity folder")
        if check_files:
            full = root / rel
            check_inside(root_real, full, where)
            if not full.is_file():
                raise DatasetError(where, f"image {full} does not exist")
        out.append((rel, label))
    if not out:
        raise DatasetError(list_file, "split list names no image: empty modality")
    return out


def read_regdb(root: str | os.PathLike[str], trial: int) -> RegDBSplits:
    """Read trial ``trial`` (1..10) of a RegDB tree; see the module docstring."""
    if trial not in REGDB_TRIALS:
        raise ValueError(f"trial: must be in 1..10, got {trial}")
    root = check_root(root)
    samples: dict[tuple[str, str], list[Sample]] = {}
    for part in ("train", "test"):
        split_of = {"train": ("train", "train"), "test": ("query", "gallery")}[part]
        for modality, camera, mod, split in (("visible", VISIBLE_CAMERA, Modality.VISIBLE, split_of[0]),
                                             ("thermal", THERMAL_CAMERA, Modality.INFRARED, split_of[1])):
            pairs = read_list(root, list_path(root, part, modality, trial))
            samples[(part, modality)] = [Sample(p, lab, camera, mod, split) for p, lab in pairs]
    train_ids = {s.identity for k in ("visible", "thermal") for s in samples[("train", k)]}
    for modality in ("visible", "thermal"):
        overlap = sorted(train_ids & {s.identity for s in samples[("test", modality)]})
        if overlap:
            raise DatasetError(list_path(root, "test", modality, trial),
                               f"shares identities {overlap[:10]} with the train lists of trial {trial}")
    train = samples[("train", "visible")] + samples[("train", "thermal")]
    log.info("RegDB %s trial %d: %d train, %d test visible, %d test thermal", root, trial, len(train),
             len(samples[("test", "visible")]), len(samples[("test", "thermal")]))
    return RegDBSplits(train=train, test_visible=samples[("test", "visible")],
                       test_thermal=samples[("test", "thermal")], trial=trial)
