"""Benchmark of the prepare stage: streaming Arrow shards vs. whole-dataset numpy arrays.

Two synthetic SYSU-MM01 trees are generated (generation timed separately): the embedded
default (48 identities, 3,456 images) and one of SYSU-MM01's real size (491 identities:
296 train + 99 val + 96 test, 12 images per identity and camera = 35,352 images; the real
dataset has 34,167 train + 11,696 test-camera images, of which the protocol uses ~34k
train + ~10.6k test). Each tree is then prepared at the training size (288x144 by
default) by two methods, each in its own child process that reports wall time and peak
RSS (``resource.getrusage``):

- shards: ``vireid.data.prepare.prepare`` (decode, resize, JPEG re-encode, streamed into
  Arrow IPC shards; memory bounded by one record batch);
- in-memory: the community approach (AGW ``pre_process_sysu.py``): every image decoded,
  resized and held in a numpy uint8 array [N, H, W, 3] per split, then ``np.save``d.

    uv run --frozen python bench/bench_prepare.py              # prints, updates docs/benchmarks.md
    uv run --frozen python bench/bench_prepare.py --no-real --no-docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vireid.config import DataConfig, SyntheticConfig  # noqa: E402
from vireid.io import atomic_write_text  # noqa: E402

SECTION = "## Data preparation"
REAL = SyntheticConfig(sysu_identities=491, sysu_images_per_camera=12, sysu_test_fraction=96 / 491,
                       sysu_val_fraction=99 / 491)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(method: str, root: str, out: str, h: int, w: int) -> None:
    """Run one preparation in this (fresh) process; print a JSON line of figures."""
    import numpy as np
    from PIL import Image

    from vireid.data.prepare import collect_splits, prepare  # same imports for both methods

    cfg = DataConfig(root=root, image_height=h, image_width=w, holdout_identities=4)
    before = _rss_mb()
    t0 = time.perf_counter()
    if method == "shards":
        prepare(cfg, out, log_every=10**9)
        n = sum(s["rows"] for s in json.loads((Path(out) / "manifest.json").read_text())["splits"].values())
    else:
        splits, _ = collect_splits(cfg)
        Path(out).mkdir(parents=True, exist_ok=True)
        n = 0
        for name, samples in splits.items():
            images = []
            for s in samples:
                with Image.open(Path(root) / s.path) as im:
                    images.append(np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)))
            arr = np.stack(images)  # [N, H, W, 3] uint8, the whole split in memory
            np.save(Path(out) / f"{name}_img.npy", arr)
            np.save(Path(out) / f"{name}_label.npy", np.asarray([s.identity for s in samples]))
            n += len(samples)
            del images, arr
    elapsed = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(json.dumps({"method": method, "images": n, "seconds": elapsed, "rss_before_mb": before,
                      "rss_peak_mb": _rss_mb(), "output_mb": size / 2**20}))


def measure(method: str, root: Path, work: Path, h: int, w: int) -> dict:
    out = work / f"out-{method}"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, __file__, "--child", method, str(root), str(out), str(h), str(w)],
                          check=True, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def generate(root: Path, cfg: SyntheticConfig) -> float:
    from vireid.data.synthetic import generate_sysu

    t0 = time.perf_counter()
    generate_sysu(root, cfg)
    return time.perf_counter() - t0


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}; load average at start {os.getloadavg()[0]:.1f} "
            "(machine shared with other jobs)")


def render(rows: list[dict], h: int, w: int, host: str, command: str) -> str:
    lines = [SECTION, "",
             f"Prepare stage (`vireid.data.prepare`) vs. the community in-memory numpy approach, "
             f"images resized to {h}x{w}. Each figure is one child process; peak RSS includes the "
             "imports (torch, pyarrow), listed separately as 'RSS before'.", "",
             f"Machine: {host}.", f"Command: `{command}`", "",
             "| data set | images | generation s | method | prepare s | images/s | RSS before MB | "
             "peak RSS MB | growth MB | output MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for m in (r["shards"], r["memory"]):
            lines.append(f"| {r['name']} | {m['images']} | {r['gen_s']:.1f} | {m['method']} | {m['seconds']:.1f} | "
                         f"{m['images'] / m['seconds']:.0f} | {m['rss_before_mb']:.0f} | {m['rss_peak_mb']:.0f} | "
                         f"{m['rss_peak_mb'] - m['rss_before_mb']:.0f} | {m['output_mb']:.0f} |")
    lines += ["", "Ratios (in-memory / shards):", ""]
    for r in rows:
        s, m = r["shards"], r["memory"]
        grow_s = max(1.0, s["rss_peak_mb"] - s["rss_before_mb"])
        lines.append(f"- {r['name']}: peak RSS x{m['rss_peak_mb'] / s['rss_peak_mb']:.2f}, memory growth "
                     f"x{(m['rss_peak_mb'] - m['rss_before_mb']) / grow_s:.1f}, time x{m['seconds'] / s['seconds']:.2f}.")
    lines += ["", "The shard writer's memory stays flat (one record batch of 64 images plus the open "
              "shard's buffers) whatever the data set size; the in-memory arrays grow as "
              f"N x {h} x {w} x 3 bytes."]
    return "\n".join(lines) + "\n"


def update_docs(path: Path, section: str) -> None:
    """Replace (or append) the ``## Data preparation`` section, leaving other sections untouched."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    atomic_write_text(path, new)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, root, out, h, w = sys.argv[2:7]
        child(method, root, out, int(h), int(w))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=144)
    ap.add_argument("--no-real", action="store_true", help="skip the SYSU-MM01-sized set")
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    host = machine()
    work = args.work or Path(tempfile.mkdtemp(prefix="vireid-bench-prepare-"))
    sets = [("default synthetic (48 ids)", SyntheticConfig())]
    if not args.no_real:
        sets.append(("SYSU-MM01 size (491 ids)", REAL))
    rows = []
    try:
        for name, cfg in sets:
            root = work / f"raw-{cfg.sysu_identities}" / "SYSU-MM01"
            gen_s = generate(root, cfg)
            row = {"name": name, "gen_s": gen_s}
            for method in ("shards", "memory"):
                row[method] = measure(method, root, work, args.height, args.width)
                print(name, json.dumps(row[method]), flush=True)
            rows.append(row)
            shutil.rmtree(root.parent, ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    command = "uv run --frozen python bench/bench_prepare.py" + (" --no-real" if args.no_real else "")
    section = render(rows, args.height, args.width, host, command)
    print(section)
    if not args.no_docs:
        update_docs(args.docs, section)


if __name__ == "__main__":
    main()
