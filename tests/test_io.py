"""Atomic writers leave either the old content or the new, never a partial one."""

from pathlib import Path

import pytest

from vireid.io import atomic_directory, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]
    atomic_write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "m.json").read_text().startswith('{\n  "a"')


def test_atomic_directory_failure_keeps_old(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    with atomic_directory(out) as tmp:
        (tmp / "x").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "x").write_text("half")
        raise RuntimeError("interrupted")
    assert (out / "x").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]
    with atomic_directory(out) as tmp:
        (tmp / "y").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["y"]


def test_sha256_file_reads_in_blocks(tmp_path) -> None:
    import hashlib

    from vireid.io import sha256_file

    data = bytes(range(256)) * 5000  # 1.28 MB: more than one block
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk=7) == hashlib.sha256(data).hexdigest()


def test_environ_set_restores_the_previous_state(monkeypatch) -> None:
    import os

    from vireid.io import environ_set

    monkeypatch.delenv("VIREID_TEST_VAR", raising=False)
    with environ_set("VIREID_TEST_VAR", "1"):
        assert os.environ["VIREID_TEST_VAR"] == "1"
    assert "VIREID_TEST_VAR" not in os.environ
    monkeypatch.setenv("VIREID_TEST_VAR", "old")
    try:
        with environ_set("VIREID_TEST_VAR", "new"):
            raise RuntimeError
    except RuntimeError:
        pass
    assert os.environ["VIREID_TEST_VAR"] == "old"
