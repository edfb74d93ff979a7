"""Arrow IPC shards: the prepared, resized dataset every later stage reads.

Layout of a shard directory::

    <out>/manifest.json
    <out>/<split>/part-00000.arrow, part-00001.arrow, ...   (split: train, val, query, gallery)

Columns: ``image`` (binary: JPEG at the prepared size), ``path`` (relative to the raw
root), ``identity`` (the dataset's identity number), ``label``, ``camera``, ``modality``
(0 visible, 1 infrared), ``split``.

Label convention: in split ``train``, ``label`` is the training label 0..C-1 of the train
:class:`IdentityMap` (stored in the manifest); in every other split (``val``, ``query``,
``gallery``) ``label`` is -1: those identities are not classifier rows, and evaluation
uses ``identity``.

Writing streams: one image is decoded, resized and re-encoded at a time and rows go out in
record batches of at most ``batch_rows``, so peak memory does not grow with the dataset.
The whole directory is built under a temporary name (:func:`vireid.io.atomic_directory`):
a failure (e.g. a corrupt image, reported as :class:`DatasetError`) leaves no shard set.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, UnidentifiedImageError

from vireid.data.errors import DatasetError
from vireid.data.identity import IdentityMap
from vireid.data.sample import Modality, Sample
from vireid.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

FORMAT = "vireid-shards/1"
SPLIT_ORDER: tuple[str, ...] = ("train", "val", "query", "gallery", "test")
SCHEMA = pa.schema([
    ("image", pa.binary()),
    ("path", pa.string()),
    ("identity", pa.int64()),
    ("label", pa.int64()),
    ("camera", pa.int64()),
    ("modality", pa.int8()),
    ("split", pa.string()),
])
LABEL_CONVENTION = ("train: label = train IdentityMap label 0..C-1; val/query/gallery: label = -1 "
                    "(use identity)")


def load_image(root: Path, sample: Sample, size: tuple[int, int], quality: int) -> bytes:
    """Decode ``root/sample.path``, convert to RGB, resize to (H, W), re-encode as JPEG.

    Raises :class:`DatasetError` naming the file when it is missing, empty or not a
    decodable image.
    """
    path = root / sample.path
    try:
        nbytes = path.stat().st_size
    except OSError as exc:
        raise DatasetError(path, f"cannot read image: {exc.strerror or exc}") from None
    if nbytes == 0:
        raise DatasetError(path, "zero-byte image")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(path, f"corrupt or unreadable image: {exc}") from None
    h, w = size
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.Resampling.LANCZOS)  # AGW's preprocessing filter
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class _SplitWriter:
    """Rows of one split -> ``part-NNNNN.arrow`` files of at most ``shard_rows`` rows."""

    def __init__(self, folder: Path, shard_rows: int, batch_rows: int) -> None:
        self.folder, self.shard_rows, self.batch_rows = folder, shard_rows, batch_rows
        self.files: list[tuple[Path, int]] = []
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._sink: Any = None
        self._in_file = 0
        self._rows: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}

    def add(self, row: Mapping[str, Any]) -> None:
        for name in SCHEMA.names:
            self._rows[name].append(row[name])
        if len(self._rows["image"]) >= self.batch_rows or \
                self._in_file + len(self._rows["image"]) >= self.shard_rows:
            self._flush()

    def _flush(self) -> None:
        n = len(self._rows["image"])
        if n == 0:
            return
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"part-{len(self.files):05d}.arrow"
            self._sink = pa.OSFile(str(path), "wb")
            self._writer = pa.ipc.new_file(self._sink, SCHEMA)
            self.files.append((path, 0))
        batch = pa.record_batch([pa.array(self._rows[f.name], type=f.type) for f in SCHEMA], schema=SCHEMA)
        self._writer.write_batch(batch)
        self._in_file += n
        self.files[-1] = (self.files[-1][0], self._in_file)
        self._rows = {name: [] for name in SCHEMA.names}
        if self._in_file >= self.shard_rows:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer, self._sink, self._in_file = None, None, 0

    def close(self) -> None:
        self._flush()
        self._close_file()


def _counts(samples: Sequence[Sample]) -> dict[str, Any]:
    cams: dict[str, int] = {}
    for s in samples:
        cams[str(s.camera)] = cams.get(str(s.camera), 0) + 1
    return {
        "rows": len(samples),
        "identities": len({s.identity for s in samples}),
        "modality": {m.value: sum(1 for s in samples if s.modality is m) for m in Modality},
        "camera": dict(sorted(cams.items(), key=lambda kv: int(kv[0]))),
    }


def write_shards(
    out_dir: str | os.PathLike[str],
    root: str | os.PathLike[str],
    splits: Mapping[str, Sequence[Sample]],
    *,
    dataset: str,
    image_size: tuple[int, int],
    jpeg_quality: int = 95,
    shard_rows: int = 1024,
    regdb_trial: int | None = None,
    extra: Mapping[str, Any] | None = None,
    batch_rows: int = 64,
    log_every: int = 1000,
) -> Path:
    """Prepare ``splits`` (name -> samples of the raw tree at ``root``) into ``out_dir``.

    ``image_size`` is (H, W). Empty splits are not written (and not in ``split_names``).
    Returns ``out_dir``. See the module docstring for the layout and label convention.
    """
    root = Path(root)
    out_dir = Path(out_dir)
    train_map = IdentityMap.from_samples(splits.get("train", ()))
    names = [s for s in SPLIT_ORDER if splits.get(s)] + sorted(set(splits) - set(SPLIT_ORDER))
    total = sum(len(splits[s]) for s in names)
    done, t0 = 0, time.perf_counter()
    manifest: dict[str, Any] = {
        "format": FORMAT, "dataset": dataset, "source_root": str(root), "regdb_trial": regdb_trial,
        "image_height": image_size[0], "image_width": image_size[1], "jpeg_quality": jpeg_quality,
        "shard_rows": shard_rows, "label_convention": LABEL_CONVENTION,
        "identity_maps": {"train": train_map.to_dict()}, "splits": {}, "extra": dict(extra or {}),
    }
    with atomic_directory(out_dir) as tmp:
        for name in names:
            samples = splits[name]
            writer = _SplitWriter(tmp / name, shard_rows, batch_rows)
            try:
                for s in samples:
                    if s.split != name:
                        raise ValueError(f"sample {s.path} has split {s.split!r}, written under {name!r}")
                    writer.add({
                        "image": load_image(root, s, image_size, jpeg_quality), "path": s.path,
                        "identity": s.identity, "camera": s.camera, "modality": s.modality.code,
                        "label": train_map.label(s.identity) if name == "train" else -1, "split": name,
                    })
                    done += 1
                    if done % log_every == 0:
                        rate = done / max(1e-9, time.perf_counter() - t0)
                        log.info("prepare: %d/%d images (%.0f images/s)", done, total, rate)
            finally:
                writer.close()
            shards = [{"file": p.relative_to(tmp).as_posix(), "rows": n, "sha256": sha256_file(p)}
                      for p, n in writer.files]
            manifest["splits"][name] = {**_counts(samples), "shards": shards,
                                        "identity_list": sorted({s.identity for s in samples})}
        digest = hashlib.sha256()
        for name in names:
            for shard in manifest["splits"][name]["shards"]:
                digest.update(f"{shard['file']} {shard['sha256']}\n".encode())
        manifest["sha256_total"] = digest.hexdigest()
        atomic_write_json(tmp / "manifest.json", manifest)
    elapsed = time.perf_counter() - t0
    log.info("prepare: wrote %d images in %.1f s (%.0f images/s) to %s", total, elapsed,
             total / max(elapsed, 1e-9), out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------
# reading


def decode_jpeg(data: bytes) -> torch.Tensor:
    """JPEG bytes -> uint8 tensor [3, H, W] (PIL: no torchvision import in loader workers)."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.array(im.convert("RGB"), dtype=np.uint8)  # [H, W, 3], writable copy
    return torch.from_numpy(arr).permute(2, 0, 1)  # channels-last strides: faster uint8 resize


class ShardTable:
    """One split: metadata columns as numpy arrays, images decoded on demand.

    Shard files are memory-mapped (``pyarrow.memory_map``), so opening a table reads only
    the metadata columns. A table pickles as its file list and reopens lazily, so it can be
    handed to DataLoader worker processes.
    """

    def __init__(self, files: Sequence[str | os.PathLike[str]]) -> None:
        self.files = [Path(f) for f in files]
        self._images: list[pa.ChunkedArray] | None = None
        self._open()

    def _open(self) -> None:
        tables = [pa.ipc.open_file(pa.memory_map(str(f), "r")).read_all() for f in self.files]
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        self.path: np.ndarray = np.asarray(table.column("path").to_pylist(), dtype=object)  # [N] str
        self.identity: np.ndarray = table.column("identity").to_numpy().astype(np.int64)  # [N]
        self.label: np.ndarray = table.column("label").to_numpy().astype(np.int64)  # [N]
        self.camera: np.ndarray = table.column("camera").to_numpy().astype(np.int64)  # [N]
        self.modality: np.ndarray = table.column("modality").to_numpy().astype(np.int64)  # [N] 0/1
        images = table.column("image")
        self._chunks = images.chunks
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks])  # [n_chunks + 1]

    def __len__(self) -> int:
        return len(self.path)

    def image_bytes(self, i: int) -> bytes:
        """The stored JPEG of row ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range 0..{len(self) - 1}")
        c = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._chunks[c][i - int(self._starts[c])].as_py()

    def image(self, i: int) -> torch.Tensor:
        """Row ``i`` decoded: uint8 tensor [3, H, W]."""
        return decode_jpeg(self.image_bytes(i))

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.files = state["files"]
        self._open()


class ShardSet:
    """A prepared shard directory: ``manifest``, ``split_names``, ``table(split)``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        import json

        self.dir = Path(directory)
        manifest_path = self.dir / "manifest.json"
        if not manifest_path.is_file():
            raise DatasetError(manifest_path, "no shard manifest (run the prepare stage)")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise DatasetError(manifest_path, f"unknown shard format {self.manifest.get('format')!r}")
        present = self.manifest["splits"]  # JSON keys are sorted: restore the protocol order
        self.split_names: tuple[str, ...] = tuple(
            [s for s in SPLIT_ORDER if s in present] + sorted(set(present) - set(SPLIT_ORDER)))

    @property
    def identity_map(self) -> IdentityMap:
        """Train identity -> label map (classifier rows)."""
        return IdentityMap.from_dict(self.manifest["identity_maps"]["train"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["identity_maps"]["train"]["identities"])

    def table(self, split: str) -> ShardTable:
        if split not in self.manifest["splits"]:
            raise KeyError(f"split {split!r} not in {self.dir} (splits: {', '.join(self.split_names)})")
        return ShardTable([self.dir / s["file"] for s in self.manifest["splits"][split]["shards"]])

    def verify(self) -> None:
        """Recompute every shard's sha256; DatasetError names a file that changed."""
        for split in self.split_names:
            for s in self.manifest["splits"][split]["shards"]:
                if sha256_file(self.dir / s["file"]) != s["sha256"]:
                    raise DatasetError(self.dir / s["file"], "content hash differs from manifest.json")
