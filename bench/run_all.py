"""Run the benchmarks of docs/benchmarks.md (and, on request, the ablation of docs/method.md).

Each benchmark is the command its section of docs/benchmarks.md documents, run as a child
process (``sys.executable``) in the repository root, one after the other. The raw results
go where the docs say: the JSON files under ``bench/results/``; ``bench_eval.py`` and
``bench_prepare.py`` write no JSON but rewrite their own tables in docs/benchmarks.md, as
their documented commands do. A failing benchmark does not stop the others; the exit status
is 1 if any failed, 0 otherwise.

    uv run --frozen python bench/run_all.py                        # all but the ablation (30-40 min on 2 cores)
    uv run --frozen python bench/run_all.py --list                 # names and commands, runs nothing
    uv run --frozen python bench/run_all.py --only cpu_train_step loader
    uv run --frozen python bench/run_all.py --with-ablation        # + the ablation (about two hours on 2 CPU cores)

``make bench`` runs the first form. The GPU training step runs only where
``torch.cuda.is_available()``; elsewhere it is reported as skipped. The two documented
loader runs (``loader.json`` and ``loader_raw.json``) are the same command but for the JSON
name, and one run measures every path of both tables, so it runs once, writing
``loader_raw.json``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Benchmark:
    """One documented benchmark: ``sys.executable`` runs ``argv`` in the repository root."""

    name: str
    argv: tuple[str, ...]  # the script (relative to the repository root) and its arguments
    needs_gpu: bool = False
    env: Mapping[str, str] = field(default_factory=dict)  # set on top of os.environ
    ablation: bool = False  # runs only with --with-ablation

    @property
    def script(self) -> str:
        return self.argv[0]


# In the order of docs/benchmarks.md; the ablation (docs/method.md) last. Durations are the
# docs' figures on the 2-core development machine.
BENCHMARKS: tuple[Benchmark, ...] = (
    # docs "Evaluation": 653 s wall.
    Benchmark("eval", ("bench/bench_eval.py",)),
    # docs "Data preparation": about 13 min at load 8-10, roughly a third of that when idle.
    Benchmark("prepare", ("bench/bench_prepare.py",)),
    # docs "Training step on a GPU (H100)": the Trainer-based benchmark's GPU command (the
    # figures there came from the earlier standalone benchmark).
    Benchmark("gpu_train_step", (
        "bench/bench_train_step.py", "--device", "cuda", "--arch", "resnet50",
        "--height", "288", "--width", "144", "--P", "8", "--K", "4", "--identities", "96",
        "--steps", "60", "--loader-workers", "8", "--flops", "--count-syncs",
        "--methods", "baseline,full", "--variants", "fp32,bf16,bf16cl,fast",
        "--json", "bench/results/gpu_train_step_trainer.json",
    ), needs_gpu=True),
    # docs "Loader throughput" (loader.json) and "Raw shards" (loader_raw.json): one command,
    # one run measures all five paths; 65 s wall on the idle machine.
    Benchmark("loader", (
        "bench/bench_loader.py", "--images", "512", "--source-height", "512",
        "--source-width", "256", "--demand", "2709", "--json", "bench/results/loader_raw.json",
    )),
    # docs "Training step through the Trainer": every train.* switch and DDP with one gloo
    # worker, both methods, 2 x 20 steps each; about 8 min on the idle 2-core machine.
    Benchmark("cpu_train_step", (
        "bench/bench_train_step.py", "--device", "cpu", "--steps", "20",
        "--variants", "fp32,bf16,cl,compiled", "--ddp-overhead",
        "--json", "bench/results/cpu_train_step_trainer.json",
    )),
    # docs "Ray Train overhead on the CPU": runs of 92 + 197 + 174 + 95 s wall, about 10 min.
    # Ray must not restart its workers through `uv run` (the Makefile exports the same).
    Benchmark("ray_overhead", (
        "bench/bench_ray_overhead.py", "--epochs", "8", "--order", "prrp",
        "--json", "bench/results/ray_overhead_prrp.json",
    ), env={"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0"}),
    # docs "Training on the CPU" (issue #26): the train stage side by side with 5593448 (a temporary
    # worktree with its own environment), 2 rounds of 4 epochs each, about 10 min on the idle machine.
    Benchmark("cpu_train_stage", (
        "bench/bench_cpu_train.py", "--other", "5593448", "--epochs", "4", "--rounds", "2",
        "--json", "bench/results/cpu_train_stage.json",
    )),
    # docs/method.md "Why the additions lose here": per-term gradients of the make-run model
    # (needs `make run`'s outputs/train/model.pt and data/shards), about a minute.
    Benchmark("loss_gradients", (
        "bench/loss_gradients.py", "--shards", "data/shards", "--model", "outputs/train/model.pt",
        "--batches", "8", "--json", "bench/results/loss_gradients_cpu.json",
    )),
    # docs/method.md "Why draws differ": the generator's records of draws 0-5, seconds.
    Benchmark("draw_stats", (
        "bench/draw_stats.py", "--seeds", "0", "1", "2", "3", "4", "5", "--json", "bench/results/draw_stats.json",
    )),
    # docs "Python start-up": a worker's imports from source vs with the .pyc files, 3 pairs, ~2 min.
    Benchmark("startup", ("bench/bench_startup.py", "--rounds", "3", "--json", "bench/results/startup.json")),
    # docs/method.md "Measured on the synthetic data": 25 trainings of 40 epochs (5 configurations
    # x 5 seeds, 3-6 min each on 2 cores), about two hours. Needs the prepared shards
    # (`uv run dvc repro prepare`). Only with --with-ablation.
    Benchmark("ablation", (
        "bench/ablation.py", "--shards", "data/shards", "--seeds", "0", "1", "2", "3", "4",
        "--plot", "docs/img/ablation_curves.png", "--json", "bench/results/ablation_cpu.json",
    ), ablation=True),
)

NAMES: tuple[str, ...] = tuple(b.name for b in BENCHMARKS)


@dataclass
class Outcome:
    name: str
    status: str  # "ok", "FAILED (exit N)", "skipped: reason"
    seconds: float | None = None

    @property
    def failed(self) -> bool:
        return self.status.startswith("FAILED")


def command_line(bench: Benchmark) -> str:
    """The command as one shell line (environment assignments first)."""
    env = [f"{k}={shlex.quote(v)}" for k, v in bench.env.items()]
    return " ".join([*env, shlex.join([sys.executable, *bench.argv])])


def cuda_available() -> bool:
    import torch  # imported here: --list and CPU-only selections do not pay for it

    return bool(torch.cuda.is_available())


def run_one(bench: Benchmark) -> Outcome:
    print(f"\n=== {bench.name}: {command_line(bench)}", flush=True)
    env = {**os.environ, **bench.env}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *bench.argv], cwd=REPO, env=env, check=False)
    seconds = time.perf_counter() - start
    status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    print(f"=== {bench.name}: {status} after {seconds:.1f} s", flush=True)
    return Outcome(bench.name, status, seconds)


def summary(outcomes: Sequence[Outcome]) -> str:
    width = max(len("benchmark"), *(len(o.name) for o in outcomes))
    lines = [f"{'benchmark':<{width}}  {'wall s':>8}  status", f"{'-' * width}  {'-' * 8}  ------"]
    for o in outcomes:
        wall = f"{o.seconds:.1f}" if o.seconds is not None else "-"
        lines.append(f"{o.name:<{width}}  {wall:>8}  {o.status}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="print the benchmarks and their commands, run nothing")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=NAMES,
                    help=f"run only these benchmarks (known: {', '.join(NAMES)})")
    ap.add_argument("--with-ablation", action="store_true",
                    help="also run the ablation of docs/method.md (an hour or more on a CPU)")
    args = ap.parse_args(argv)
    ablations = [b.name for b in BENCHMARKS if b.ablation]
    if args.only and not args.with_ablation and set(args.only) & set(ablations):
        ap.error(f"{', '.join(ablations)} runs only with --with-ablation")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for b in BENCHMARKS:
            tags = [t for t, on in (("needs a GPU", b.needs_gpu),
                                    ("only with --with-ablation", b.ablation)) if on]
            print(f"{b.name}{' (' + '; '.join(tags) + ')' if tags else ''}\n    {command_line(b)}")
        return 0
    selected = [b for b in BENCHMARKS
                if (args.only is None or b.name in args.only) and (args.with_ablation or not b.ablation)]
    gpu: bool | None = None  # checked once, and only if a GPU benchmark is selected
    outcomes: list[Outcome] = []
    for bench in selected:
        if bench.needs_gpu:
            if gpu is None:
                gpu = cuda_available()
            if not gpu:
                reason = "skipped: needs a GPU (torch.cuda.is_available() is False)"
                print(f"\n=== {bench.name}: {reason}", flush=True)
                outcomes.append(Outcome(bench.name, reason))
                continue
        outcomes.append(run_one(bench))
    print("\n" + summary(outcomes), flush=True)
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
