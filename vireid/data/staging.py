"""Shards where every Ray worker reads them: staged on the run's storage, cached per node.

On a local Ray the workers read the prepared shard directory in place. On a cluster
(``train.ray_address`` set) the head's ``data/shards`` exists on the head only, so the
driver stages the shard set under ``<train.storage>/shards/<key>`` (``key``: the sha256 of
its ``manifest.json``, which names every shard's sha256): a folder on a volume every node
mounts, read there in place, or an object store (``s3://``, ``gs://``) from which each node
copies it once into a node-local cache. ``manifest.json`` is written last, so a staged set
with a manifest is complete; the same shards are staged once, however many runs use them.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vireid.data.errors import DatasetError
from vireid.data.shards import ShardSet, verify_shards
from vireid.io import atomic_directory
from vireid.ray_session import is_uri

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardSource:
    """Where Ray workers find the shard set."""

    path: str  # a local folder (read in place) or a path on ``filesystem``
    filesystem: Any = None  # a pyarrow filesystem (object store): copied to a node-local cache


def shard_key(shards_dir: str | os.PathLike[str]) -> str:
    """The staged name of a shard set: the sha256 of its ``manifest.json``."""
    return _key((Path(shards_dir) / MANIFEST).read_bytes())


def _key(manifest: bytes) -> str:
    return hashlib.sha256(manifest).hexdigest()


def _object_store(path: str, filesystem: Any) -> tuple[Any, str] | None:
    """``(pyarrow filesystem, path on it)`` for an object-store location, None for a local folder."""
    if filesystem is not None:
        return filesystem, path
    if is_uri(path):
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(path)
    return None


def _files(shards: ShardSet) -> list[str]:
    """The shard files of ``shards`` relative to its folder, manifest excluded."""
    return [s["file"] for entry in shards.manifest["splits"].values() for s in entry["shards"]]


def stage_shards(shards_dir: str | os.PathLike[str], root: str, filesystem: Any = None) -> ShardSource:
    """Copy the shard set to ``root/<key>`` (unless already there) and return where it is.

    ``root``: a local folder (a volume every node mounts; built under a temporary name, then
    renamed) or an object-store path on ``filesystem`` (or a URI; files first, manifest last).
    """
    shards = ShardSet(shards_dir)
    manifest = (shards.dir / MANIFEST).read_bytes()
    key = _key(manifest)
    store = _object_store(root, filesystem)
    if store is None:
        dest = Path(root) / key
        if (dest / MANIFEST).is_file() and (dest / MANIFEST).read_bytes() == manifest:
            log.info("shards %s already staged at %s", key[:12], dest)
            return ShardSource(str(dest))
        with atomic_directory(dest) as tmp:
            for rel in _files(shards):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shards.dir / rel, tmp / rel)
            (tmp / MANIFEST).write_bytes(manifest)
        log.info("staged shards %s at %s", key[:12], dest)
        return ShardSource(str(dest))
    fs, base = store
    dest = f"{base.rstrip('/')}/{key}"
    if _read_remote(fs, f"{dest}/{MANIFEST}") == manifest:
        log.info("shards %s already staged at %s", key[:12], dest)
        return ShardSource(dest, fs)
    files = _files(shards)
    for folder in sorted({f"{dest}/{rel}".rsplit("/", 1)[0] for rel in files}):
        fs.create_dir(folder, recursive=True)  # needed on a filesystem with real folders
    for i, rel in enumerate(files, 1):
        with open(shards.dir / rel, "rb") as src, fs.open_output_stream(f"{dest}/{rel}") as out:
            shutil.copyfileobj(src, out, length=8 << 20)
        log.info("staging shards %s: %d/%d files", key[:12], i, len(files))
    with fs.open_output_stream(f"{dest}/{MANIFEST}") as out:  # last: marks the set complete
        out.write(manifest)
    log.info("staged shards %s at %s", key[:12], dest)
    return ShardSource(dest, fs)


def _read_remote(fs: Any, path: str) -> bytes | None:
    """The bytes of ``path`` on ``fs``, None when it does not exist."""
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def local_shards(source: ShardSource, cache_root: str | os.PathLike[str]) -> Path:
    """A local folder holding the shard set of ``source`` (run on the worker's node).

    A local ``source`` is used in place. An object-store one is copied once per node into
    ``cache_root/<key>`` (under a lock, so a node's workers copy it once; verified against
    its manifest before it is renamed into place).
    """
    store = _object_store(source.path, source.filesystem)
    if store is None:
        return Path(source.path)
    fs, path = store
    key = path.rstrip("/").rsplit("/", 1)[-1]
    cache = Path(cache_root)
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / key
    with open(cache / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / MANIFEST).is_file():
            return dest
        manifest = _read_remote(fs, f"{path}/{MANIFEST}")
        if manifest is None:
            raise DatasetError(Path(path) / MANIFEST, "staged shard set has no manifest (the stage that "
                                                      "staged it did not finish; rerun it)")
        with atomic_directory(dest) as tmp:
            (tmp / MANIFEST).write_bytes(manifest)
            shards = ShardSet(tmp)
            for rel in _files(shards):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                with fs.open_input_stream(f"{path}/{rel}") as src, open(tmp / rel, "wb") as out:
                    shutil.copyfileobj(src, out, length=8 << 20)
            verify_shards(tmp, shards.manifest)
    log.info("copied shards %s from %s to %s", key[:12], path, dest)
    return dest


def shard_source(shards_dir: str | os.PathLike[str], ray_address: str, root: str,
                 filesystem: Any = None) -> ShardSource:
    """Where the workers of a run on ``ray_address`` read ``shards_dir``: the folder itself on
    a local Ray (empty address), else the set staged under ``root`` (:func:`stage_shards`)."""
    if not ray_address:
        return ShardSource(str(Path(shards_dir).resolve()))
    return stage_shards(shards_dir, root, filesystem)
