"""Loader throughput: decoded + augmented images per second per core, from the Arrow shards
against reading the JPEG folder with PIL (the community loader), measured in the same run.

Both paths produce the same training tensor (float [3, H, W], AGW augmentation): the
shards hold JPEGs already resized to the training size; the folder path opens the original
file, converts to RGB and resizes it (what the community loader does per image, per epoch).
Each path is measured single-process (images/s per core) and through a DataLoader with 2
workers, and compared with the demand of the training step (``--demand`` images/s).

A third path, "Arrow shards, augmentation on the device" (``train.augment_on_device``):
the workers only decode and ship uint8 [3, H, W]; the augmentation runs as one batched op
(:class:`vireid.data.batch_augment.BatchAugment`) on the training device. Its loader is
measured like the others; the batched augmentation's cost is measured separately, on one
CPU core per batch of 64 (on a GPU it runs on the device, off the loader's cores).

A fourth and fifth, raw shards (``data.shard_encoding: raw``): the same images stored as
uint8 [3, H, W] pixels, so the worker's "decode" is one copy out of the mapped file;
decode-only (augmentation on the device) and with the per-image augmentation. Raw paths are
timed over ``--raw-passes`` passes over the same images (one pass takes a few tens of ms).

    uv run python bench/bench_loader.py --height 288 --width 144 --demand 2709
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vireid.config import DataConfig, SyntheticConfig  # noqa: E402
from vireid.data.batch_augment import BatchAugment  # noqa: E402
from vireid.data.loader import ShardImageDataset  # noqa: E402
from vireid.data.prepare import collect_splits, prepare  # noqa: E402
from vireid.data.shards import ShardSet  # noqa: E402
from vireid.data.synthetic import generate_sysu  # noqa: E402
from vireid.data.transforms import train_transform  # noqa: E402


class FolderDataset(Dataset[dict[str, Any]]):
    """The community path: PIL opens each original JPEG, RGB, then the same augmentation."""

    def __init__(self, root: Path, paths: list[str], h: int, w: int) -> None:
        self.root, self.paths = root, paths
        self.transform = train_transform(h, w)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        with Image.open(self.root / self.paths[i]) as im:
            arr = np.asarray(im.convert("RGB"))  # [H0,W0,3] uint8
        image = torch.from_numpy(arr).permute(2, 0, 1)  # [3,H0,W0]
        return {"image": self.transform(image), "index": i}


def rate(dataset: Dataset[dict[str, Any]], n: int, workers: int, batch: int = 64, passes: int = 1) -> float:
    """Images/s over the first ``n`` items, ``passes`` times in one loader (after one
    warm-up batch)."""
    loader = DataLoader(torch.utils.data.Subset(dataset, list(range(n)) * passes), batch_size=batch,
                        num_workers=workers, shuffle=False, persistent_workers=False)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    seen = 0
    for b in it:
        seen += b["image"].shape[0]
    return seen / (time.perf_counter() - t0)


def augment_seconds_per_image(dataset: Dataset[dict[str, Any]], n: int, batch: int = 64,
                              repeats: int = 16) -> tuple[float, float]:
    """CPU seconds per image of :class:`BatchAugment` on uint8 batches of ``batch`` decoded
    images, on the current threads: (mean over ``repeats`` batches after one warm-up batch,
    best batch). The mean includes first-touch page faults of the fresh ~30 MB float output
    (the CPU allocator returns large blocks to the system); the best batch mostly does not."""
    images = torch.stack([dataset[i]["image"] for i in range(min(n, batch))])  # uint8 [B,3,H,W]
    if images.shape[0] < batch:  # fewer decoded images than a batch: repeat them
        images = images.repeat((batch + images.shape[0] - 1) // images.shape[0], 1, 1, 1)[:batch]
    augment = BatchAugment()
    torch.manual_seed(0)
    augment(images)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        augment(images)
        times.append(time.perf_counter() - t0)
    return sum(times) / (repeats * batch), min(times) / batch


def shard_bytes_per_image(shards: Path) -> float:
    """Bytes on disk of a shard set's Arrow files per stored image (all splits)."""
    files = sorted(shards.glob("*/part-*.arrow"))
    rows = sum(len(ShardSet(shards).table(split)) for split in ShardSet(shards).split_names)
    return sum(f.stat().st_size for f in files) / rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=144)
    ap.add_argument("--source-height", type=int, default=288, help="size of the generated originals")
    ap.add_argument("--source-width", type=int, default=144)
    ap.add_argument("--images", type=int, default=1024, help="images timed per measurement")
    ap.add_argument("--demand", type=float, default=0.0,
                    help="training-step images/s to compare with (e.g. the GPU step figure)")
    ap.add_argument("--raw-passes", type=int, default=8, help="passes over the images for the raw paths")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        root = Path(tmp) / "SYSU-MM01"
        synth = SyntheticConfig(sysu_identities=24, sysu_images_per_camera=10,
                                image_height=args.source_height, image_width=args.source_width)
        generate_sysu(root, synth)
        cfg = DataConfig(root=str(root), image_height=args.height, image_width=args.width)
        prepare(cfg, Path(tmp) / "shards")
        prepare(dataclasses.replace(cfg, shard_encoding="raw"), Path(tmp) / "shards_raw")
        table = ShardSet(Path(tmp) / "shards").table("train")
        raw_table = ShardSet(Path(tmp) / "shards_raw").table("train")
        disk = {enc: shard_bytes_per_image(Path(tmp) / d) for enc, d in (("jpeg", "shards"), ("raw", "shards_raw"))}
        print(json.dumps({"shard_bytes_per_image": {k: round(v) for k, v in disk.items()}}), flush=True)
        splits, _ = collect_splits(cfg)
        paths = [s.path for s in splits["train"]]
        n = min(args.images, len(table), len(paths))
        shard_ds = ShardImageDataset(table, train_transform(args.height, args.width))
        folder_ds = FolderDataset(root, paths, args.height, args.width)
        device_ds = ShardImageDataset(table)  # decode only: uint8 [3, H, W]
        raw_ds = ShardImageDataset(raw_table, train_transform(args.height, args.width))
        raw_device_ds = ShardImageDataset(raw_table)  # "decode" only: a copy out of the mapped file
        results = {}
        for name, ds, passes in (("shards", shard_ds, 1), ("folder_pil", folder_ds, 1),
                                 ("shards_device", device_ds, 1), ("raw_device", raw_device_ds, args.raw_passes),
                                 ("raw", raw_ds, max(1, args.raw_passes // 4))):
            for workers in (0, 2):
                results[f"{name}_w{workers}"] = rate(ds, n, workers, passes=passes)
                print(json.dumps({"path": name, "workers": workers,
                                  "images_per_s": round(results[f'{name}_w{workers}'], 1)}), flush=True)
        aug_s, aug_best_s = augment_seconds_per_image(device_ds, n)
        print(json.dumps({"path": "device_augment_cpu", "batch": 64,
                          "us_per_image": round(aug_s * 1e6, 1),
                          "images_per_s": round(1 / aug_s, 1),
                          "us_per_image_best_batch": round(aug_best_s * 1e6, 1)}), flush=True)
    summary = {
        "images_timed": n, "size": [args.height, args.width],
        "per_core_shards": results["shards_w0"], "per_core_folder": results["folder_pil_w0"],
        "ratio_shards_vs_folder_per_core": results["shards_w0"] / results["folder_pil_w0"],
        "ratio_shards_vs_folder_2_workers": results["shards_w2"] / results["folder_pil_w2"],
        # augmentation on the device: the workers only decode (uint8)
        "per_core_shards_device": results["shards_device_w0"],
        "shards_device_2_workers": results["shards_device_w2"],
        "ratio_shards_device_vs_shards_per_core": results["shards_device_w0"] / results["shards_w0"],
        "ratio_shards_device_vs_shards_2_workers": results["shards_device_w2"] / results["shards_w2"],
        "device_augment_cpu_us_per_image": aug_s * 1e6,
        "device_augment_cpu_images_per_s": 1 / aug_s,
        "device_augment_cpu_us_per_image_best_batch": aug_best_s * 1e6,
        "device_augment_cpu_batch": 64,
    }
    # raw shards: decode-only is a copy out of the mapped file
    summary.update({
        "shard_bytes_per_image_jpeg": disk["jpeg"], "shard_bytes_per_image_raw": disk["raw"],
        "raw_passes": args.raw_passes,
        "per_core_raw_device": results["raw_device_w0"], "raw_device_2_workers": results["raw_device_w2"],
        "per_core_raw": results["raw_w0"], "raw_2_workers": results["raw_w2"],
        "ratio_raw_device_vs_shards_device_per_core": results["raw_device_w0"] / results["shards_device_w0"],
        "ratio_raw_device_vs_shards_device_2_workers": results["raw_device_w2"] / results["shards_device_w2"],
        "ratio_raw_vs_shards_per_core": results["raw_w0"] / results["shards_w0"],
        "ratio_raw_vs_shards_2_workers": results["raw_w2"] / results["shards_w2"],
    })
    if args.demand:
        summary["raw_device_2_workers_over_demand"] = results["raw_device_w2"] / args.demand
        summary["raw_2_workers_over_demand"] = results["raw_w2"] / args.demand
        summary["workers_needed_for_demand_raw_device"] = args.demand / results["raw_device_w0"]
        summary["workers_needed_for_demand_raw"] = args.demand / results["raw_w0"]
        summary["demand_images_per_s"] = args.demand
        summary["shards_2_workers_over_demand"] = results["shards_w2"] / args.demand
        summary["workers_needed_for_demand"] = args.demand / results["shards_w0"]
        summary["shards_device_2_workers_over_demand"] = results["shards_device_w2"] / args.demand
        summary["workers_needed_for_demand_device"] = args.demand / results["shards_device_w0"]
    summary["load_average_1min_start_end"] = [load_start, os.getloadavg()[0]]
    print(json.dumps({"path": "shards_device", "ratio_vs_shards_per_core":
                      round(summary["ratio_shards_device_vs_shards_per_core"], 3),
                      "ratio_vs_shards_2_workers":
                      round(summary["ratio_shards_device_vs_shards_2_workers"], 3)}), flush=True)
    for name, base in (("raw_device", "shards_device"), ("raw", "shards")):
        line = {"path": name, "vs": base,
                "ratio_per_core": round(results[f"{name}_w0"] / results[f"{base}_w0"], 3),
                "ratio_2_workers": round(results[f"{name}_w2"] / results[f"{base}_w2"], 3)}
        if args.demand:
            line["2_workers_over_demand"] = round(results[f"{name}_w2"] / args.demand, 3)
        print(json.dumps(line), flush=True)
    print(json.dumps({"summary": summary}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
