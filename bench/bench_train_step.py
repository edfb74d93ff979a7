"""Training-step throughput: the full method against the plain two-stream baseline, and
(on a GPU) fp32 eager against bf16 autocast + channels_last + torch.compile.

One step = forward, the task's named losses, backward, SGD step and the memory write, on
random images already on the device (this measures the step, not the data path; the data
path has its own benchmark). Every variant of a run is measured in the same process, so the
printed ratios compare like with like.

    uv run python bench/bench_train_step.py --device cpu                  # method overhead, CPU
    python3 bench/bench_train_step.py --device cuda --arch resnet50 \\
        --height 288 --width 144 --variants fp32,fast   # GPU (device machine)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vireid.config import LossConfig, ModelConfig  # noqa: E402
from vireid.modeling import ReIDTask, VIReIDModel  # noqa: E402
from vireid.modeling.speed import compile_for_speed  # noqa: E402

METHODS = {
    "baseline": (dict(fusion=False, memory=False), dict(distill=False)),
    "full": (dict(fusion=True, memory=True), dict(distill=True, dynamic=True)),
}


def make_batch(p: int, k: int, h: int, w: int, classes: int, device: torch.device,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch in the sampler's layout: [visible block (P*K), infrared block (P*K)]."""
    ids = torch.randperm(classes, generator=gen)[:p]
    labels = ids.repeat_interleave(k).repeat(2)  # [2PK]
    modalities = torch.cat([torch.zeros(p * k), torch.ones(p * k)]).long()  # [2PK]
    images = torch.randn(2 * p * k, 3, h, w, generator=gen)  # [2PK,3,H,W]
    return images.to(device), labels.to(device), modalities.to(device)


def step_flops(task: ReIDTask, batch: tuple[torch.Tensor, ...]) -> float:
    """FLOPs of one forward + backward (torch's flop counter, matrix ops and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        losses, _ = task(*batch)
        sum(losses.values()).backward()
    task.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run_variant(method: str, variant: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    mk, lk = METHODS[method]
    mcfg = ModelConfig(arch=args.arch, pretrained=False, memory_size=8, **mk)
    lcfg = LossConfig(**lk)
    model = VIReIDModel(mcfg, args.classes).to(device)
    # fp32: eager float32 (the community recipe); bf16: + bf16 autocast; bf16cl: + channels_last;
    # fast: + torch.compile of each part of the network (static shapes; the per-modality
    # routing stays eager, so no data-dependent shape reaches the compiler)
    # graphs: fast with CUDA graphs (compile mode reduce-overhead) to remove launch overhead
    # graphs_task: graphs + the task's loss head compiled too (default mode)
    bf16 = variant in ("bf16", "bf16cl", "fast", "graphs", "graphs_task") and device.type == "cuda"
    channels_last = variant in ("bf16cl", "fast", "graphs", "graphs_task")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    task = ReIDTask(model, lcfg)
    # graphs also uses the fused CUDA SGD kernel (one launch for all parameters)
    fused = variant in ("graphs", "graphs_task") and device.type == "cuda"
    opt = torch.optim.SGD(model.param_groups(0.1, 0.01), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4, fused=fused or None)
    gen = torch.Generator().manual_seed(0)
    batches = [make_batch(args.P, args.K, args.height, args.width, args.classes, device, gen)
               for _ in range(4)]
    if channels_last:
        batches = [(x.contiguous(memory_format=torch.channels_last), y, m) for x, y, m in batches]
    flops = step_flops(task, batches[0]) if args.flops else 0.0
    if variant in ("fast", "graphs", "graphs_task"):
        compile_for_speed(model, channels_last=True,
                          mode="reduce-overhead" if variant.startswith("graphs") else args.compile_mode or None)
    if variant == "graphs_task":
        task.compile(dynamic=False)

    def step(i: int) -> float:
        x, y, m = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            losses, state = task(x, y, m)
            loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        task.after_step(state)
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.steps):
        last = step(i)
    sync()
    dt = time.perf_counter() - t0
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for i in range(5):
                step(i)
            sync()
        ev = prof.key_averages()
        print(f"profile {method}/{variant}: self CPU total "
              f"{sum(e.self_cpu_time_total for e in ev) / 5e3:.1f} ms/step, self device total "
              f"{sum(getattr(e, 'self_device_time_total', 0) for e in ev) / 5e3:.1f} ms/step")
        print(ev.table(sort_by="self_cpu_time_total", row_limit=12))
    batch = 2 * args.P * args.K
    out = {"method": method, "variant": variant, "images_per_s": batch * args.steps / dt,
           "step_ms": 1000 * dt / args.steps, "warmup_s": warm_s, "loss": last,
           "gflop_per_step": flops / 1e9}
    if flops:
        out["achieved_tflops"] = flops * args.steps / dt / 1e12
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
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--P", type=int, default=8)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--classes", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--methods", default="baseline,full")
    ap.add_argument("--variants", default="fp32")
    ap.add_argument("--flops", action="store_true", help="count FLOPs per step")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile-mode", default="",
                    help="torch.compile mode of the fast variant ('' for the default mode)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table per variant")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as the AGW recipe sets it
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "arch": args.arch,
            "image": [args.height, args.width], "batch": [args.P, args.K, 2]}
    print(json.dumps(info))
    results = []
    for method in args.methods.split(","):
        for variant in args.variants.split(","):
            r = run_variant(method, variant, args, device)
            results.append(r)
            print(json.dumps(r), flush=True)
    # a method named more than once (e.g. --methods baseline,full,baseline,full, so that a
    # drift of the machine's speed cancels): the mean of its runs
    runs: dict[tuple[str, str], list[float]] = {}
    for r in results:
        runs.setdefault((r["method"], r["variant"]), []).append(r["images_per_s"])
    by = {k: sum(v) / len(v) for k, v in runs.items()}
    summary: dict[str, float] = {}
    for v in args.variants.split(","):
        if ("baseline", v) in by and ("full", v) in by:
            summary[f"overhead_full_vs_baseline_{v}"] = by[("baseline", v)] / by[("full", v)] - 1
    for m in dict.fromkeys(args.methods.split(",")):
        for v in args.variants.split(","):
            if v != "fp32" and (m, "fp32") in by and (m, v) in by:
                summary[f"speedup_{v}_vs_fp32_{m}"] = by[(m, v)] / by[(m, "fp32")]
    if device.type == "cuda":
        summary["matmul_bf16_peak_tflops"] = matmul_peak(device)
        for r in results:
            if "achieved_tflops" in r:
                summary[f"fraction_of_peak_{r['method']}_{r['variant']}"] = (
                    r["achieved_tflops"] / summary["matmul_bf16_peak_tflops"])
    print(json.dumps({"summary": summary}))
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "results": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
