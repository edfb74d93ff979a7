"""File primitives every stage shares: atomic writes and their leftovers, file hashes, scoped env.

Atomic output, so that nothing is ever left half-written: every writer in vireid goes through
these helpers: the content is written to a temporary
name in the destination folder, flushed, and renamed over the final name (an atomic
operation on POSIX file systems), with the mode a plain ``open`` would give (``0666`` /
``0777`` less the umask: ``0644`` / ``0755`` usually, not the temporary's ``0600``, so a
teammate on a shared volume can read the outputs). A crash leaves either the old file or the new one, and
:func:`remove_stale_temporaries` clears what a killed writer left. Also :func:`sha256_file`
(the one file hash) and :func:`environ_set` (an environment variable set for a block).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())  # mkstemp's 0600 would survive the rename
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temporary name; it replaces ``path`` only on success.

    ``with atomic_directory(out) as tmp: ...write files into tmp...``. On an exception the
    temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would survive the rename
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def output_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``path`` (and missing parents) created for the block; when the block fails, the folders
    it created are removed again if still empty: a refused run leaves no empty output folder."""
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (something was written) or gone: leave it
                break
        raise


def stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """What an interrupted :func:`atomic_write_bytes` / :func:`atomic_directory` for ``path``
    leaves beside it: ``.<name>.*.tmp`` (files or folders) and ``.<name>.old``."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    found = sorted(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))
    old = path.with_name(f".{path.name}.old")
    return found + ([old] if old.exists() or old.is_symlink() else [])


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def remove_stale_temporaries(*paths: str | os.PathLike[str]) -> list[Path]:
    """Remove :func:`stale_temporaries` of each output path (a stage calls this when it starts:
    a killed run of it left them; DVC runs one instance of a stage at a time). Returns what
    was removed."""
    removed = []
    for path in paths:
        for tmp in stale_temporaries(path):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def environ_set(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block; the previous value (or its absence) after."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved
