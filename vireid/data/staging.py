"""Shards where every Ray worker reads them: staged on the run's storage, cached per node.

On a local Ray the workers read the prepared shard directory in place. On a cluster
(``train.ray_address`` set) the head's ``data/shards`` exists on the head only, so the
driver stages the shard set under ``<train.storage>/shards/<key>`` (``key``: the sha256 of
its ``manifest.json``, which names every shard's sha256): a folder on a volume every node
mounts, read there in place, or an object store (``s3://``, ``gs://``) from which each node
copies it once into a node-local cache. ``manifest.json`` is written last, so a staged set
with a manifest is complete; the same shards are staged once, however many runs use them.

A single file (the ImageNet weights the workers start from) goes the same way
(:func:`file_source`): staged under ``<root>/<sha256>/<its name>``, copied once per node into
the same kind of cache under the same lock, and verified against its sha256 where it is
read (:func:`local_file`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vireid.data.errors import DatasetError
from vireid.data.shards import ShardSet, verify_shards
from vireid.io import atomic_directory, sha256_file
from vireid.ray_session import is_uri

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardSource:
    """Where Ray workers find the shard set."""

    path: str  # a local folder (read in place) or a path on ``filesystem``
    filesystem: Any = None  # a pyarrow filesystem (object store): copied to a node-local cache


@dataclass(frozen=True)
class StagedFile:
    """Where Ray workers find one file, and the sha256 its bytes must have."""

    path: str  # a local file (read in place) or a path on ``filesystem``
    sha256: str
    filesystem: Any = None  # a pyarrow filesystem (object store): copied to a node-local cache


class StagedFileError(RuntimeError):
    """A staged file is missing or its bytes are not the ones staged; the message names it."""


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
        _upload(shards.dir / rel, fs, f"{dest}/{rel}")
        log.info("staging shards %s: %d/%d files", key[:12], i, len(files))
    with fs.open_output_stream(f"{dest}/{MANIFEST}") as out:  # last: marks the set complete
        out.write(manifest)
    log.info("staged shards %s at %s", key[:12], dest)
    return ShardSource(dest, fs)


def _upload(local: Path, fs: Any, path: str) -> None:
    """Copy the local file ``local`` to ``path`` on ``fs`` (whose folder exists; an object
    store's object appears whole, once complete)."""
    with open(local, "rb") as src, fs.open_output_stream(path) as out:
        shutil.copyfileobj(src, out, length=8 << 20)


def _download(fs: Any, path: str, local: Path, digest: Any = None) -> None:
    """Copy ``path`` on ``fs`` to the local file ``local``, feeding the bytes to ``digest`` (a
    hashlib object) when given."""
    with fs.open_input_stream(path) as src, open(local, "wb") as out:
        while block := src.read(8 << 20):
            if digest is not None:
                digest.update(block)
            out.write(block)


@contextmanager
def _node_lock(cache: Path, key: str) -> Iterator[None]:
    """Hold the node-wide lock of ``key`` in the cache folder ``cache`` (made if missing), so
    that a node's workers copy an object-store item once."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
    dest = cache / key
    with _node_lock(cache, key):
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
                _download(fs, f"{path}/{rel}", tmp / rel)
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


def stage_file(path: str | os.PathLike[str], root: str, filesystem: Any = None) -> StagedFile:
    """Copy the file ``path`` to ``root/<sha256>/<its name>`` (unless already there) and return
    where it is.

    ``root``: a local folder (a volume every node mounts; the ``<sha256>`` folder built under
    a temporary name, then renamed) or an object-store path on ``filesystem`` (or a URI). A
    staged copy in a folder with the same sha256, or an object of the same size, counts as
    there (bytes are verified where they are read: :func:`local_file`).
    """
    src = Path(path)
    sha = sha256_file(src)
    store = _object_store(root, filesystem)
    if store is None:
        dest = Path(root) / sha / src.name
        if dest.is_file() and sha256_file(dest) == sha:
            log.info("%s (sha256 %s) already staged at %s", src.name, sha[:12], dest)
            return StagedFile(str(dest), sha)
        with atomic_directory(dest.parent) as tmp:
            shutil.copyfile(src, tmp / src.name)
        log.info("staged %s (sha256 %s) at %s", src, sha[:12], dest)
        return StagedFile(str(dest), sha)
    import pyarrow.fs

    fs, base = store
    remote = f"{base.rstrip('/')}/{sha}/{src.name}"
    info = fs.get_file_info(remote)
    if info.type == pyarrow.fs.FileType.File and info.size == src.stat().st_size:
        log.info("%s (sha256 %s) already staged at %s", src.name, sha[:12], remote)
        return StagedFile(remote, sha, fs)
    fs.create_dir(remote.rsplit("/", 1)[0], recursive=True)  # needed on a filesystem with real folders
    _upload(src, fs, remote)
    log.info("staged %s (sha256 %s) at %s", src, sha[:12], remote)
    return StagedFile(remote, sha, fs)


def file_source(path: str | os.PathLike[str], ray_address: str, root: str,
                filesystem: Any = None) -> StagedFile:
    """Where the workers of a run on ``ray_address`` read the file ``path``: the file itself on
    a local Ray (empty address), else the copy staged under ``root`` (:func:`stage_file`)."""
    if not ray_address:
        resolved = Path(path).resolve()
        return StagedFile(str(resolved), sha256_file(resolved))
    return stage_file(path, root, filesystem)


def local_file(source: StagedFile, cache_root: str | os.PathLike[str]) -> Path:
    """A local file with the bytes of ``source``, verified against ``source.sha256`` (run on
    the worker's node, where the file is read).

    A local ``source`` is read in place. An object-store one is copied once per node into
    ``cache_root/<sha256>/<name>`` (under the node's lock; a copy whose hash differs is not
    kept). Raises :class:`StagedFileError` naming the file and the hashes when the file is
    missing or its bytes differ.
    """
    store = _object_store(source.path, source.filesystem)
    if store is None:
        local = Path(source.path)
        if not local.is_file():
            raise StagedFileError(f"{local} (sha256 {source.sha256[:12]}...) does not exist on this node")
        _check_hash(local, sha256_file(local), source.sha256,
                    "it changed after the driver hashed it; rerun the stage, which stages it again")
        return local
    import pyarrow.fs

    fs, path = store
    name = path.rstrip("/").rsplit("/", 1)[-1]
    cache = Path(cache_root)
    dest = cache / source.sha256 / name
    with _node_lock(cache, source.sha256):
        if dest.is_file():
            if sha256_file(dest) == source.sha256:
                return dest
            log.warning("%s: damaged cached copy (sha256 differs from %s...); copying it again",
                        dest, source.sha256[:12])
        if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            raise StagedFileError(f"{path} (sha256 {source.sha256[:12]}...) is not in the storage "
                                  "(the stage that staged it did not finish, or it was deleted; rerun it)")
        with atomic_directory(dest.parent) as tmp:
            digest = hashlib.sha256()
            _download(fs, path, tmp / name, digest)
            _check_hash(path, digest.hexdigest(), source.sha256,
                        "a damaged or replaced staged copy; delete it and rerun the stage to stage the file again")
    log.info("copied %s (sha256 %s) to %s", path, source.sha256[:12], dest)
    return dest


def _check_hash(path: str | os.PathLike[str], actual: str, expected: str, hint: str) -> None:
    """Raise :class:`StagedFileError` (``path``, both hashes, ``hint``) unless they are equal."""
    if actual != expected:
        raise StagedFileError(f"{path}: sha256 mismatch: its bytes hash to {actual[:12]}..., not "
                              f"{expected[:12]}... as staged ({hint})")
