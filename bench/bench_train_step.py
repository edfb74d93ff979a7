"""Training throughput of the pipeline's own Trainer, per train.* speed switch.

Every variant is the real path a user runs (``vireid.training.loop.Trainer.run_epoch``: the
sampler, the loader, the switches of ``train.precision``/``memory_format``/``compile``, the
task's losses, SGD, the memory write) on a generated SYSU-layout shard set at the given
resolution, measured in one process so that the ratios to fp32 eager compare like with like.
Each variant runs one warm-up epoch (compilation happens there) and one timed epoch of
``--steps`` steps; images/s is that epoch's (data loading included, as in training).

    uv run python bench/bench_train_step.py --device cpu                      # CPU switches + DDP overhead
    python3 bench/bench_train_step.py --device cuda --arch resnet50 --height 288 --width 144 \\
        --variants fp32,bf16,bf16cl,fast --flops                              # GPU (device machine)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vireid.config import Config, SyntheticConfig, config_from_dict, config_to_dict  # noqa: E402
from vireid.data.prepare import prepare  # noqa: E402
from vireid.data.synthetic import generate_sysu  # noqa: E402
from vireid.training.loop import Trainer  # noqa: E402

METHODS = {
    "baseline": ({"fusion": False, "memory": False}, {"distill": False}),
    "full": ({"fusion": True, "memory": True}, {"distill": True, "dynamic": True}),
}
# variant -> train.precision, train.memory_format, train.compile
VARIANTS = {
    "fp32": ("fp32", "contiguous", "none"),
    "bf16": ("bf16", "contiguous", "none"),
    "cl": ("fp32", "channels_last", "none"),
    "bf16cl": ("bf16", "channels_last", "none"),
    "compiled": ("fp32", "contiguous", "regions"),
    "fast": ("bf16", "channels_last", "regions"),  # what train.*: auto gives on a GPU
}


def make_shards(root: Path, height: int, width: int, identities: int) -> Path:
    """A generated SYSU-layout shard set (train split only matters here)."""
    synth = SyntheticConfig(seed=0, sysu_identities=identities, sysu_images_per_camera=4,
                            sysu_val_fraction=0.05, sysu_test_fraction=0.1,
                            image_height=height, image_width=width)
    plain = config_to_dict(Config())
    plain["data"].update(root=str(root / "raw"), synth=config_to_dict(synth), holdout_identities=0,
                         image_height=height, image_width=width, shard_encoding="raw")
    cfg = config_from_dict(plain)
    generate_sysu(cfg.data.root, synth)
    return prepare(cfg.data, root / "shards")


def bench_config(args: argparse.Namespace, method: str, variant: str) -> Config:
    mk, lk = METHODS[method]
    precision, layout, compiled = VARIANTS[variant]
    plain = config_to_dict(Config())
    plain["data"].update(image_height=args.height, image_width=args.width, holdout_identities=0)
    plain["model"].update(arch=args.arch, pretrained=False, memory_size=8, **mk)
    plain["loss"].update(**lk)
    plain["train"].update(epochs=2, iters_per_epoch=args.steps, identities_per_batch=args.P,
                          instances_per_modality=args.K, warmup_epochs=0, milestones=[],
                          use_gpu=args.device == "cuda", loader_workers=args.loader_workers,
                          augment_on_device=True, precision=precision, memory_format=layout,
                          compile=compiled, log_every=args.log_every, validate_every=10)
    return config_from_dict(plain)


def step_flops(trainer: Trainer) -> float:
    """FLOPs of one forward + backward of the task (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = next(iter(trainer.loader))
    x = trainer.augment(batch["image"].to(trainer.device)) if trainer.augment else batch["image"].to(trainer.device)
    counter = FlopCounterMode(display=False)
    with counter:
        losses, _ = trainer.task(x, batch["label"].to(trainer.device).long(),
                                 batch["modality"].to(trainer.device).long())
        trainer.task.total(losses).backward()
    trainer.task.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run_variant(args: argparse.Namespace, shards: Path, method: str, variant: str,
                data_parallel: bool = False) -> dict[str, Any]:
    cfg = bench_config(args, method, variant)
    torch._dynamo.reset()
    trainer = Trainer(cfg, shards, device=args.device, data_parallel=data_parallel)
    flops = step_flops(trainer) if args.flops and not trainer.runtime.compile_regions else 0.0
    t0 = time.perf_counter()
    trainer.run_epoch()  # warm-up (and compilation)
    warm_s = time.perf_counter() - t0
    syncs = None
    if args.device == "cuda":
        torch.cuda.synchronize()
        if args.count_syncs:
            import warnings

            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                record = trainer.run_epoch()
            torch.cuda.set_sync_debug_mode("default")
            syncs = sum("synchroniz" in str(w.message) for w in caught)
        else:
            record = trainer.run_epoch()
        torch.cuda.synchronize()
    else:
        record = trainer.run_epoch()
    out = {"method": method, "variant": variant, "ddp": data_parallel, "runtime": trainer.runtime.describe(),
           "images_per_s": record["images_per_s"], "step_ms": 1000 * record["seconds"] / record["steps"],
           "warmup_s": warm_s, "loss": record["loss"]}
    if syncs is not None:
        out["host_syncs_per_step"] = syncs / record["steps"]
    if flops:
        out["gflop_per_step"] = flops / 1e9
    return out


def matmul_peak(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """Measured bf16 matrix-multiply TFLOP/s on this device (the hardware yardstick)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--P", type=int, default=8)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--identities", type=int, default=48, help="generated identities (>= P)")
    ap.add_argument("--steps", type=int, default=20, help="steps of the timed epoch (and of the warm-up)")
    ap.add_argument("--methods", default="baseline,full")
    ap.add_argument("--variants", default="fp32,bf16,cl,compiled")
    ap.add_argument("--ddp-overhead", action="store_true",
                    help="also run fp32 under DistributedDataParallel with one gloo worker")
    ap.add_argument("--loader-workers", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--flops", action="store_true", help="count FLOPs per step (eager variants)")
    ap.add_argument("--count-syncs", action="store_true", help="CUDA: count host syncs in the timed epoch")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as the AGW recipe sets it
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "arch": args.arch,
            "image": [args.height, args.width], "batch": [args.P, args.K, 2], "steps": args.steps}
    print(json.dumps(info), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        shards = make_shards(Path(tmp), args.height, args.width, args.identities)
        for method in args.methods.split(","):
            for variant in args.variants.split(","):
                results.append(run_variant(args, shards, method, variant))
                print(json.dumps(results[-1]), flush=True)
            if args.ddp_overhead:
                import torch.distributed as dist

                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", "29533")
                dist.init_process_group("gloo", rank=0, world_size=1)
                try:
                    results.append(run_variant(args, shards, method, "fp32", data_parallel=True))
                finally:
                    dist.destroy_process_group()
                print(json.dumps(results[-1]), flush=True)
    runs: dict[tuple[str, str, bool], list[float]] = {}
    for r in results:
        runs.setdefault((r["method"], r["variant"], r["ddp"]), []).append(r["images_per_s"])
    by = {k: sum(v) / len(v) for k, v in runs.items()}
    summary: dict[str, float] = {}
    for (method, variant, ddp), ips in by.items():
        if (method, "fp32", False) in by and (variant != "fp32" or ddp):
            name = "ddp1_fp32" if ddp else variant
            summary[f"speedup_{name}_vs_fp32_{method}"] = ips / by[(method, "fp32", False)]
    if device.type == "cuda":
        summary["matmul_bf16_peak_tflops"] = matmul_peak(device)
        for r in results:
            if "gflop_per_step" in r:
                tflops = r["gflop_per_step"] * r["images_per_s"] / (2 * args.P * args.K) / 1e3
                summary[f"tflops_{r['method']}_{r['variant']}"] = tflops
    print(json.dumps({"summary": summary}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "results": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
