"""Path checks shared by the readers: nothing may point outside the dataset root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from vireid.data.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


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
