"""Path rules shared by the readers: what an image file is, and nothing outside the dataset root.

:data:`IMAGE_SUFFIXES` is also what ``vireid search`` takes from a query or gallery folder
(:mod:`vireid.retrieval`, re-exported by :mod:`vireid.data`).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from vireid.data.errors import DatasetError

#: File name suffixes (lower case) of image files: the union of what the SYSU-MM01 reader
#: listed (.jpg .jpeg .png .bmp) and what ``vireid search`` listed (those and .tif .tiff
#: .webp). SYSU-MM01 ships .jpg and RegDB .bmp (its reader follows its list files, not
#: suffixes); the rest are formats PIL decodes that a search gallery may hold. A file with one
#: of them that does not decode is an error naming it (prepare) or skipped with a warning
#: (a search gallery).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def check_root(root: str | os.PathLike[str]) -> Path:
    """Return ``root`` as a Path; it must be an existing directory."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset root is not a directory (does it exist?)")
    return root


def check_inside(root_real: Path, path: Path, culprit: str | os.PathLike[str]) -> None:
    """Raise when ``path`` (after following symlinks) leaves ``root_real``.

    ``culprit`` is the file named in the error (the list file or the symlink itself).
    """
    real = Path(os.path.realpath(path))
    if real != root_real and root_real not in real.parents:
        raise DatasetError(culprit, f"{path} resolves to {real}, outside the dataset root {root_real}")


def relative_posix(rel: str, culprit: str | os.PathLike[str]) -> str:
    """Normalise a relative path from a list file to '/' form; reject absolute or '..' paths."""
    text = rel.replace("\\", "/")
    pure = PurePosixPath(text)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise DatasetError(culprit, f"path {rel!r} is outside the dataset root")
    return pure.as_posix()
