"""Shards staged where a cluster's workers read them (:mod:`vireid.data.staging`): on a shared
folder read in place, on an object store copied once per node and verified. The object-store
code runs here on pyarrow's local filesystem handed in as the store (the same calls as S3;
the real S3 server is exercised by tests/infra/test_two_node_cluster.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.fs
import pytest

from vireid.data.errors import DatasetError
from vireid.data.shards import ShardSet
from vireid.data.staging import ShardSource, local_shards, shard_key, shard_source, stage_shards


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_local_ray_reads_the_folder_in_place(tiny_shards, tmp_path: Path) -> None:
    shards, _ = tiny_shards
    assert shard_source(shards, "", str(tmp_path / "storage")) == ShardSource(str(Path(shards).resolve()))
    assert not (tmp_path / "storage").exists()  # nothing staged


def test_shared_folder_staging_copies_once_and_is_read_in_place(tiny_shards, tmp_path: Path) -> None:
    shards, _ = tiny_shards
    source = shard_source(shards, "head:6379", str(tmp_path / "storage" / "shards"))
    key = hashlib.sha256((Path(shards) / "manifest.json").read_bytes()).hexdigest()
    assert shard_key(shards) == key and source == ShardSource(str(tmp_path / "storage" / "shards" / key))
    assert _digests(Path(source.path)) == _digests(Path(shards))
    assert local_shards(source, tmp_path / "cache") == Path(source.path) and not (tmp_path / "cache").exists()
    stamp = (Path(source.path) / "manifest.json").stat().st_mtime_ns
    assert stage_shards(shards, str(tmp_path / "storage" / "shards")) == source
    assert (Path(source.path) / "manifest.json").stat().st_mtime_ns == stamp  # not copied again
    assert [p.name for p in (tmp_path / "storage" / "shards").iterdir()] == [key]  # no temporaries left


def test_object_store_set_is_copied_to_the_node_cache_once_and_verified(tiny_shards, tmp_path: Path) -> None:
    shards, _ = tiny_shards
    store = pyarrow.fs.LocalFileSystem()
    source = stage_shards(shards, str(tmp_path / "bucket" / "shards"), store)
    assert source.filesystem is store and source.path.endswith(shard_key(shards))
    local = local_shards(source, tmp_path / "node-cache")
    assert local == tmp_path / "node-cache" / shard_key(shards)
    assert _digests(local) == _digests(Path(shards))
    ShardSet(local).verify()
    # a second worker on the node reuses the copy
    stamp = (local / "manifest.json").stat().st_mtime_ns
    assert local_shards(source, tmp_path / "node-cache") == local
    assert (local / "manifest.json").stat().st_mtime_ns == stamp
    # staging the same set again uploads nothing: the manifest there is the same
    first = Path(source.path, "manifest.json").stat().st_mtime_ns
    assert stage_shards(shards, str(tmp_path / "bucket" / "shards"), store) == source
    assert Path(source.path, "manifest.json").stat().st_mtime_ns == first


def test_a_corrupt_or_incomplete_staged_set_is_refused_and_not_cached(tiny_shards, tmp_path: Path) -> None:
    shards, _ = tiny_shards
    store = pyarrow.fs.LocalFileSystem()
    source = stage_shards(shards, str(tmp_path / "bucket"), store)
    victim = sorted(Path(source.path, "train").glob("*.arrow"))[0]
    victim.write_bytes(victim.read_bytes()[:-7] + b"garbage")
    with pytest.raises(DatasetError, match="content hash differs"):
        local_shards(source, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []
    Path(source.path, "manifest.json").unlink()  # an upload that stopped before its manifest
    with pytest.raises(DatasetError, match="manifest.json.*no manifest"):
        local_shards(source, tmp_path / "cache2")
