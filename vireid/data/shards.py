"""Write, read and verify Arrow IPC shards: the prepared, resized dataset every later stage reads.

Layout of a shard directory::

    <out>/manifest.json
    <out>/<split>/part-00000.arrow, part-00001.arrow, ...   (split: train, val, query, gallery)

Columns: ``image`` (binary: the image at the prepared size, encoded per the manifest's
``image_encoding``), ``path`` (relative to the raw root), ``identity`` (the dataset's
identity number), ``label``, ``camera``, ``modality`` (0 visible, 1 infrared), ``split``.

Image encodings (``data.shard_encoding``; manifest keys ``image_encoding``,
``image_height``, ``image_width``):

- ``jpeg``: JPEG of the resized RGB image (``jpeg_quality``), about 10-15 KB at 288x144;
  :meth:`ShardTable.image` decodes it.
- ``raw``: the resized RGB pixels themselves, uint8 in [3, H, W] C order (channel planes
  R, G, B; ``3*H*W`` bytes per row, 124 KB at 288x144); :meth:`ShardTable.image` copies
  them out of the memory-mapped shard file: no decode.

Format ``vireid-shards/2`` carries ``image_encoding``; ``vireid-shards/1`` (written before
the key existed) is JPEG. A reader refuses a manifest whose ``format`` or
``image_encoding`` it does not know.

Label convention: in split ``train``, ``label`` is the training label 0..C-1 of the train
:class:`IdentityMap` (stored in the manifest); in every other split (``val``, ``query``,
``gallery``) ``label`` is -1: those identities are not classifier rows, and evaluation
uses ``identity``.

Writing streams: one image is decoded, resized and encoded at a time and rows go out in
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
import pyarrow.compute as pc
import torch
from PIL import Image, UnidentifiedImageError

from vireid.data.errors import DatasetError
from vireid.data.identity import IdentityMap
from vireid.data.sample import Modality, Sample
from vireid.io import atomic_directory, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

FORMAT = "vireid-shards/2"  # the manifest names its image encoding (key ``image_encoding``)
FORMAT_V1 = "vireid-shards/1"  # JPEG, written before the manifest had ``image_encoding``
READABLE_FORMATS: tuple[str, ...] = (FORMAT_V1, FORMAT)
ENCODINGS: tuple[str, ...] = ("jpeg", "raw")
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


def check_encoding(encoding: str) -> None:
    """Raise ValueError unless ``encoding`` is one of :data:`ENCODINGS`."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown image encoding {encoding!r} (known: {', '.join(ENCODINGS)})")


def resized_image(root: Path, sample: Sample, size: tuple[int, int]) -> Image.Image:
    """Decode ``root/sample.path``, convert to RGB and resize to (H, W): the image a shard stores.

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
    return rgb


def encode_image(rgb: Image.Image, encoding: str = "jpeg", quality: int = 95) -> bytes:
    """The ``image`` cell of an RGB image: JPEG bytes, or raw uint8 pixels in [3, H, W] C order."""
    if encoding == "jpeg":
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=quality)
        return buf.getvalue()
    check_encoding(encoding)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).tobytes()  # raw: [H,W,3] -> [3,H,W], C order


def load_image(root: Path, sample: Sample, size: tuple[int, int], quality: int,
               encoding: str = "jpeg") -> bytes:
    """:func:`resized_image` then :func:`encode_image`: the stored bytes of one sample."""
    return encode_image(resized_image(root, sample, size), encoding, quality)


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
    encoding: str = "jpeg",
    shard_rows: int = 1024,
    regdb_trial: int | None = None,
    extra: Mapping[str, Any] | None = None,
    batch_rows: int = 64,
    log_every: int = 1000,
) -> Path:
    """Prepare ``splits`` (name -> samples of the raw tree at ``root``) into ``out_dir``.

    ``image_size`` is (H, W); ``encoding`` is ``jpeg`` (at ``jpeg_quality``) or ``raw``.
    Empty splits are not written (and not in ``split_names``).
    Returns ``out_dir``. See the module docstring for the layout and label convention.
    """
    check_encoding(encoding)  # before any image is read
    root = Path(root)
    out_dir = Path(out_dir)
    train_map = IdentityMap.from_samples(splits.get("train", ()))
    names = [s for s in SPLIT_ORDER if splits.get(s)] + sorted(set(splits) - set(SPLIT_ORDER))
    total = sum(len(splits[s]) for s in names)
    done, t0 = 0, time.perf_counter()
    manifest: dict[str, Any] = {
        "format": FORMAT, "dataset": dataset, "source_root": str(root), "regdb_trial": regdb_trial,
        "image_encoding": encoding, "image_height": image_size[0], "image_width": image_size[1],
        "jpeg_quality": jpeg_quality if encoding == "jpeg" else None,
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
                        "image": load_image(root, s, image_size, jpeg_quality, encoding), "path": s.path,
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


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class ShardTable:
    """One split: metadata columns as numpy arrays, images decoded on demand.

    Shard files are memory-mapped (``pyarrow.memory_map``, read-only), so opening a table
    reads only the metadata columns. A table pickles as its file list, encoding and image
    size and reopens lazily, so it can be handed to DataLoader worker processes.

    ``encoding``: ``jpeg`` or ``raw`` (see the module docstring); ``image_size`` (H, W) is
    required for ``raw`` and every row is checked to hold ``3*H*W`` bytes.
    """

    def __init__(self, files: Sequence[str | os.PathLike[str]], encoding: str = "jpeg",
                 image_size: tuple[int, int] | None = None) -> None:
        check_encoding(encoding)
        if encoding == "raw" and image_size is None:
            raise ValueError("raw shards need image_size (H, W)")
        self.files = [Path(f) for f in files]
        self.encoding = encoding
        self.image_size: tuple[int, int] | None = None if image_size is None else (
            int(image_size[0]), int(image_size[1]))
        self._open()

    def _open(self) -> None:
        tables = []
        for f in self.files:
            try:
                tables.append(pa.ipc.open_file(pa.memory_map(str(f), "r")).read_all())
            except FileNotFoundError:
                raise DatasetError(f, "shard listed in manifest.json is missing (rerun the prepare stage)") from None
            except (pa.ArrowException, OSError) as e:  # truncated or overwritten
                raise DatasetError(f, f"damaged shard ({_first_line(e)}; rerun the prepare stage)") from None
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        self.path: np.ndarray = np.asarray(table.column("path").to_pylist(), dtype=object)  # [N] str
        self.identity: np.ndarray = table.column("identity").to_numpy().astype(np.int64)  # [N]
        self.label: np.ndarray = table.column("label").to_numpy().astype(np.int64)  # [N]
        self.camera: np.ndarray = table.column("camera").to_numpy().astype(np.int64)  # [N]
        self.modality: np.ndarray = table.column("modality").to_numpy().astype(np.int64)  # [N] 0/1
        self._chunks = table.column("image").chunks
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks])  # [n_chunks + 1]
        if self.encoding == "raw":
            self._check_raw_sizes(tables)

    def _check_raw_sizes(self, tables: Sequence[pa.Table]) -> None:
        """Raise :class:`DatasetError` naming the file when a row is null or does not hold
        exactly ``3*H*W`` bytes (a shard of another size or encoding)."""
        assert self.image_size is not None
        h, w = self.image_size
        nbytes = 3 * h * w
        for f, table in zip(self.files, tables, strict=True):
            column = table.column("image")
            if column.null_count:
                raise DatasetError(f, "raw shard has null images")
            sizes = pc.binary_length(column).to_numpy()  # [rows]
            if (sizes != nbytes).any():
                bad = int(sizes[sizes != nbytes][0])
                raise DatasetError(f, f"raw image of {bad} bytes, expected 3*{h}*{w} = {nbytes} "
                                      "(image_height/image_width of the manifest)")

    def __len__(self) -> int:
        return len(self.path)

    def _cell(self, i: int) -> pa.BinaryScalar:
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range 0..{len(self) - 1}")
        c = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._chunks[c][i - int(self._starts[c])]

    def image_bytes(self, i: int) -> bytes:
        """The stored ``image`` cell of row ``i`` (JPEG, or the raw pixels; a copy)."""
        return self._cell(i).as_py()

    def image(self, i: int) -> torch.Tensor:
        """Row ``i`` decoded: a fresh uint8 tensor [3, H, W].

        ``jpeg``: decoded (channels-last strides, see :func:`decode_jpeg`); ``raw``: one copy
        of the mapped bytes, no decode (a copy rather than a view: the mapping is read-only
        and a caller may write to what it gets; it costs 5 % at 2 loader workers).
        """
        if self.encoding == "jpeg":
            return decode_jpeg(self.image_bytes(i))
        assert self.image_size is not None
        h, w = self.image_size
        pixels = np.frombuffer(self._cell(i).as_buffer(), dtype=np.uint8)  # [3*H*W] read-only view
        return torch.from_numpy(pixels.copy()).view(3, h, w)

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "encoding": self.encoding, "image_size": self.image_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.files = state["files"]
        self.encoding = state.get("encoding", "jpeg")
        self.image_size = state.get("image_size")
        self._open()


class ShardSet:
    """A prepared shard directory: ``manifest``, ``split_names``, ``encoding``,
    ``image_size`` (H, W), ``table(split)``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        import json

        self.dir = Path(directory)
        manifest_path = self.dir / "manifest.json"
        if not manifest_path.is_file():
            raise DatasetError(manifest_path, "no shard manifest (run the prepare stage)")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DatasetError(manifest_path, f"unreadable shard manifest ({e}; rerun the prepare stage)") from e
        if not isinstance(self.manifest, dict):
            raise DatasetError(manifest_path, "not a shard manifest (rerun the prepare stage)")
        fmt = self.manifest.get("format")
        if fmt not in READABLE_FORMATS:
            raise DatasetError(manifest_path, f"unknown shard format {fmt!r} in key 'format' "
                                              f"(this reader knows {', '.join(READABLE_FORMATS)})")
        encoding = self.manifest.get("image_encoding", "jpeg" if fmt == FORMAT_V1 else None)
        if encoding not in ENCODINGS:
            raise DatasetError(manifest_path, f"unknown image encoding {encoding!r} in key 'image_encoding' "
                                              f"(this reader knows {', '.join(ENCODINGS)})")
        self.encoding: str = encoding
        self._check_keys(manifest_path)
        self.image_size: tuple[int, int] = (int(self.manifest["image_height"]), int(self.manifest["image_width"]))
        present = self.manifest["splits"]  # JSON keys are sorted: restore the protocol order
        self.split_names: tuple[str, ...] = tuple(
            [s for s in SPLIT_ORDER if s in present] + sorted(set(present) - set(SPLIT_ORDER)))

    def _check_keys(self, manifest_path: Path) -> None:
        """The keys every reader uses: a manifest without them is damaged (a DatasetError
        naming the key, not a KeyError later)."""
        def damaged(what: str) -> DatasetError:
            return DatasetError(manifest_path, f"damaged shard manifest: {what} (rerun the prepare stage)")

        for key in ("image_height", "image_width"):
            value = self.manifest.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise damaged(f"key {key!r} is {'missing' if value is None else repr(value)}, not a positive integer")
        splits = self.manifest.get("splits")
        if not isinstance(splits, dict):
            raise damaged("no 'splits' mapping")
        for name, entry in splits.items():
            shards = entry.get("shards") if isinstance(entry, dict) else None
            if not isinstance(shards, list) or not all(
                    isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("sha256"), str)
                    for s in shards):
                raise damaged(f"split {name!r} has no list of shards with 'file' and 'sha256'")

    @property
    def identity_map(self) -> IdentityMap:
        """Train identity -> label map (classifier rows)."""
        return IdentityMap.from_dict(self.manifest["identity_maps"]["train"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["identity_maps"]["train"]["identities"])

    def table(self, split: str) -> ShardTable:
        if split not in self.manifest["splits"]:
            raise DatasetError(self.dir / "manifest.json", f"split {split!r} not in {self.dir} (splits: "
                                                           f"{', '.join(self.split_names)}; rerun the prepare stage)")
        return ShardTable([self.dir / s["file"] for s in self.manifest["splits"][split]["shards"]],
                          encoding=self.encoding, image_size=self.image_size)

    def verify(self) -> None:
        """Recompute every shard's sha256 (:func:`verify_shards`)."""
        verify_shards(self.dir, self.manifest)


def verify_shards(directory: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
    """Check that every shard file ``manifest`` lists under ``directory`` exists and hashes to
    its recorded sha256 (so the manifest's ``sha256_total`` is what the files hold);
    :class:`DatasetError` names the first missing or changed file."""
    directory = Path(directory)
    for split, entry in manifest["splits"].items():
        for s in entry["shards"]:
            path = directory / s["file"]
            if not path.is_file():
                raise DatasetError(path, f"shard of split {split!r} listed in manifest.json is missing "
                                         "(rerun the prepare stage)")
            if sha256_file(path) != s["sha256"]:
                raise DatasetError(path, "content hash differs from manifest.json: the shard changed "
                                         "after the prepare stage wrote it (rerun the prepare stage)")
