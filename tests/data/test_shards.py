"""Prepare -> Arrow shards -> ShardSet: content, manifest, determinism, atomic failure."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vireid.config import DataConfig
from vireid.data.errors import DatasetError
from vireid.data.prepare import collect_splits, prepare
from vireid.data.shards import FORMAT, ShardSet, decode_jpeg, sha256_file

H, W = 32, 16


def _cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig(root=str(root), image_height=H, image_width=W, holdout_identities=1, **kw)  # type: ignore[arg-type]


def test_prepare_sysu_roundtrip(tiny_sysu_master: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_sysu_master, shard_rows=20)
    splits, extra = collect_splits(cfg)
    out = prepare(cfg, tmp_path / "shards")
    ss = ShardSet(out)
    assert ss.split_names == ("train", "val", "query", "gallery")
    m = ss.manifest
    assert (m["dataset"], m["image_height"], m["image_width"], m["regdb_trial"]) == ("sysu", H, W, None)
    assert m["source_root"] == str(tiny_sysu_master) and m["extra"]["val_ids"] == extra["val_ids"]
    train_ids = sorted({s.identity for s in splits["train"]})
    assert ss.identity_map.identities == tuple(train_ids) and ss.num_classes == 3
    for name, samples in splits.items():
        t = ss.table(name)
        assert len(t) == len(samples) == m["splits"][name]["rows"]
        assert t.path.tolist() == [s.path for s in samples]
        np.testing.assert_array_equal(t.identity, [s.identity for s in samples])
        np.testing.assert_array_equal(t.camera, [s.camera for s in samples])
        np.testing.assert_array_equal(t.modality, [s.modality.code for s in samples])
        expected = [train_ids.index(s.identity) for s in samples] if name == "train" else [-1] * len(samples)
        np.testing.assert_array_equal(t.label, expected)
        counts = m["splits"][name]
        assert counts["modality"] == {"visible": int((t.modality == 0).sum()), "infrared": int((t.modality == 1).sum())}
        assert counts["camera"] == {str(c): int((t.camera == c).sum()) for c in np.unique(t.camera)}
        assert all(s["rows"] <= 20 for s in counts["shards"]) and sum(s["rows"] for s in counts["shards"]) == len(t)
        for shard in counts["shards"]:
            assert sha256_file(out / shard["file"]) == shard["sha256"]
    total = hashlib.sha256()
    for name in ss.split_names:
        for shard in m["splits"][name]["shards"]:
            total.update(f"{shard['file']} {shard['sha256']}\n".encode())
    assert m["sha256_total"] == total.hexdigest()
    assert (out / "train" / "part-00001.arrow").is_file()  # 48 rows / 20 per shard
    # the stored image is the source resized (JPEG tolerance)
    t = ss.table("query")
    img = t.image(5)
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, H, W)
    src = np.asarray(Image.open(tiny_sysu_master / t.path[5]).convert("RGB").resize((W, H), Image.Resampling.LANCZOS))
    assert np.abs(img.permute(1, 2, 0).numpy().astype(float) - src).mean() < 6.0
    ss.verify()


def test_prepare_is_deterministic_and_table_pickles(tiny_sysu_master: Path, tmp_path: Path) -> None:
    a = ShardSet(prepare(_cfg(tiny_sysu_master), tmp_path / "a"))
    b = ShardSet(prepare(_cfg(tiny_sysu_master), tmp_path / "b"))
    assert a.manifest["sha256_total"] == b.manifest["sha256_total"]
    t = a.table("train")
    t2 = pickle.loads(pickle.dumps(t))
    np.testing.assert_array_equal(t2.label, t.label)
    assert t2.image_bytes(len(t) - 1) == t.image_bytes(len(t) - 1)
    with pytest.raises(IndexError):
        t.image(len(t))
    with pytest.raises(DatasetError, match="split 'test' not in"):
        a.table("test")


def test_prepare_regdb(tiny_regdb_master: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_regdb_master, dataset="regdb", regdb_trial=4)
    ss = ShardSet(prepare(cfg, tmp_path / "shards"))
    assert ss.manifest["regdb_trial"] == 4 and ss.manifest["dataset"] == "regdb"
    q, g = ss.table("query"), ss.table("gallery")
    assert set(q.modality.tolist()) == {0} and set(g.modality.tolist()) == {1}
    assert set(q.camera.tolist()) == {1} and set(g.camera.tolist()) == {2}
    assert len(ss.table("train")) + len(ss.table("val")) == 12 and ss.num_classes == 1


@pytest.mark.parametrize("damage", ["zero-byte image", "corrupt or unreadable image"])
def test_bad_image_fails_prepare_and_leaves_nothing(tiny_sysu: Path, tmp_path: Path, damage: str) -> None:
    bad = tiny_sysu / "cam6" / f"{int((tiny_sysu / 'exp' / 'test_id.txt').read_text().split(',')[-1]):04d}" / "0002.jpg"
    bad.write_bytes(b"" if damage == "zero-byte image" else b"\xff\xd8\xff\xe0 not really a jpeg" * 3)
    out = tmp_path / "out" / "shards"
    with pytest.raises(DatasetError) as err:
        prepare(_cfg(tiny_sysu), out)
    assert str(err.value).startswith(f"{bad}: {damage}")
    assert list((tmp_path / "out").iterdir()) == []  # no shard dir, no temp dir


def test_failed_prepare_keeps_previous_shards(tiny_sysu: Path, tmp_path: Path) -> None:
    out = prepare(_cfg(tiny_sysu), tmp_path / "shards")
    before = json.loads((out / "manifest.json").read_text())["sha256_total"]
    (tiny_sysu / "cam1" / "0001" / "0001.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="zero-byte image"):
        prepare(_cfg(tiny_sysu), out)
    assert ShardSet(out).manifest["sha256_total"] == before
    (out / "train" / "part-00000.arrow").write_bytes(b"tampered")
    with pytest.raises(DatasetError, match="part-00000.arrow: content hash differs"):
        ShardSet(out).verify()
    with pytest.raises(DatasetError, match="manifest.json: no shard manifest"):
        ShardSet(tmp_path)


def _resized(root: Path, rel: str) -> np.ndarray:
    """The source image as prepare resizes it, before any encoding: uint8 [H, W, 3]."""
    with Image.open(root / rel) as im:
        return np.asarray(im.convert("RGB").resize((W, H), Image.Resampling.LANCZOS))


def test_raw_shards_hold_the_resized_pixels(tiny_sysu_master: Path, tmp_path: Path) -> None:
    jpeg = ShardSet(prepare(_cfg(tiny_sysu_master, shard_rows=20), tmp_path / "jpeg"))
    raw = ShardSet(prepare(_cfg(tiny_sysu_master, shard_rows=20, shard_encoding="raw"), tmp_path / "raw"))
    m = raw.manifest
    assert (m["format"], m["image_encoding"], m["image_height"], m["image_width"]) == (FORMAT, "raw", H, W)
    assert m["jpeg_quality"] is None and jpeg.manifest["image_encoding"] == "jpeg"
    assert (raw.encoding, raw.image_size, jpeg.encoding) == ("raw", (H, W), "jpeg")
    assert [s["rows"] for s in m["splits"]["train"]["shards"]] == [20, 16]  # rows in both files
    for split, rows in (("train", (0, 19, 20, 35)), ("query", (0, 5)), ("gallery", (1, 30))):
        t, tj = raw.table(split), jpeg.table(split)
        for i in rows:
            img = t.image(i)
            assert img.dtype == torch.uint8 and tuple(img.shape) == (3, H, W) and img.is_contiguous()
            src = _resized(tiny_sysu_master, t.path[i])  # [H, W, 3]
            np.testing.assert_array_equal(img.numpy(), src.transpose(2, 0, 1))  # exactly, channel planes
            assert t.image_bytes(i) == src.transpose(2, 0, 1).tobytes()
            # the JPEG path encodes the same resized image: within JPEG tolerance of it, and
            # exactly what JPEG-encoding the raw pixels at the same quality decodes to
            assert np.abs(tj.image(i).numpy().astype(float) - img.numpy()).mean() < 10.0
            buf = io.BytesIO()
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=95)
            assert torch.equal(tj.image(i), decode_jpeg(buf.getvalue()))
    # the data hash, and with it the training run's fingerprint, differ between encodings
    assert m["sha256_total"] != jpeg.manifest["sha256_total"]
    from vireid.config import Config
    from vireid.training.loop import run_fingerprint

    assert run_fingerprint(Config(), m) != run_fingerprint(Config(), jpeg.manifest)
    raw.verify()


def test_raw_table_pickles_and_returns_fresh_images(tiny_sysu_master: Path, tmp_path: Path) -> None:
    ss = ShardSet(prepare(_cfg(tiny_sysu_master, shard_rows=20, shard_encoding="raw"), tmp_path / "raw"))
    t = ss.table("train")
    t2 = pickle.loads(pickle.dumps(t))
    assert (t2.encoding, t2.image_size) == ("raw", (H, W))
    assert all(torch.equal(t2.image(i), t.image(i)) for i in range(len(t)))
    expected = t.image(21).clone()
    t.image(21).zero_()  # a fresh tensor: neither the table nor the file sees the write
    assert torch.equal(t.image(21), expected)
    ss.verify()
    assert torch.equal(ss.table("train").image(21), expected)
    with pytest.raises(IndexError):
        t.image(len(t))


def _edit_manifest(out: Path, **changes: object) -> Path:
    manifest = out / "manifest.json"
    m = json.loads(manifest.read_text())
    for k, v in changes.items():
        if v is None:
            m.pop(k)
        else:
            m[k] = v
    manifest.write_text(json.dumps(m))
    return manifest


def test_unknown_encoding_or_format_is_refused(tiny_sysu_master: Path, tmp_path: Path) -> None:
    out = prepare(_cfg(tiny_sysu_master, shard_encoding="raw"), tmp_path / "raw")
    manifest = _edit_manifest(out, image_encoding="png")
    with pytest.raises(DatasetError) as err:
        ShardSet(out)
    assert str(err.value).startswith(f"{manifest}: unknown image encoding 'png' in key 'image_encoding'")
    assert "jpeg, raw" in str(err.value)
    _edit_manifest(out, image_encoding=None)  # format /2 without the key: refused too
    with pytest.raises(DatasetError, match=r"manifest.json: unknown image encoding None in key 'image_encoding'"):
        ShardSet(out)
    _edit_manifest(out, image_encoding="raw", format="vireid-shards/9")
    with pytest.raises(DatasetError, match=r"manifest.json: unknown shard format 'vireid-shards/9' in key 'format'"):
        ShardSet(out)
    # raw rows of another size than the manifest says: the table names the shard file
    _edit_manifest(out, format=FORMAT, image_height=H // 2)
    with pytest.raises(DatasetError, match=r"part-00000.arrow: raw image of 1536 bytes, expected 3\*16\*16 = 768"):
        ShardSet(out).table("train")


def test_format_1_manifest_reads_as_jpeg(tiny_sysu_master: Path, tmp_path: Path) -> None:
    out = prepare(_cfg(tiny_sysu_master), tmp_path / "jpeg")
    expected = ShardSet(out).table("query").image(3)
    _edit_manifest(out, format="vireid-shards/1", image_encoding=None)  # as written before the key
    ss = ShardSet(out)
    assert ss.encoding == "jpeg" and torch.equal(ss.table("query").image(3), expected)
