"""Python start-up of a Ray worker's imports, with and without the environment's .pyc files.

Every Ray worker, Tune trial and pipeline stage is a new Python process that imports torch,
Ray and MLflow. Where ``PYTHONDONTWRITEBYTECODE`` is set (this machine's shells) and the
environment was installed without bytecode (uv's default), no process ever writes the
``.pyc`` files, and each one compiles torch, sympy and Ray from source. ``make setup`` runs
``uv sync --compile-bytecode`` so they exist. This script times the same import line in
fresh processes, alternating the two cases in one run (side by side: this machine's speed
moves by the hour):

- ``source``: no usable .pyc (``-X pycache_prefix`` at an empty folder: Python looks for
  bytecode only there, and ``PYTHONDONTWRITEBYTECODE=1`` keeps it empty);
- ``bytecode``: the .pyc files beside the sources (present after ``make setup``).

    uv run --frozen python bench/bench_startup.py --rounds 3 --json bench/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORTS = "import torch, torchvision, ray.train, ray.tune, mlflow, pyarrow"


def timed(env: dict[str, str], extra: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system of the child) seconds of one fresh interpreter's imports."""
    before = os.times()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *extra, "-c", IMPORTS], env=env, check=True)
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="alternating pairs (source, bytecode)")
    ap.add_argument("--json", default="", help="write the figures here")
    args = ap.parse_args()
    site = Path(__import__("torch").__file__).parents[1]
    have = sum(1 for _ in (site / "torch").rglob("*.pyc"))
    if not have:
        sys.exit(f"error: {site}: no .pyc files under torch/ (run `make setup`, which compiles them)")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    runs: dict[str, list[tuple[float, float]]] = {"source": [], "bytecode": []}
    with tempfile.TemporaryDirectory() as empty:
        for r in range(args.rounds):
            runs["source"].append(timed(env, ["-X", f"pycache_prefix={empty}"]))
            runs["bytecode"].append(timed(env, []))
            print(f"round {r + 1}: source {runs['source'][-1][0]:.1f} s, bytecode {runs['bytecode'][-1][0]:.1f} s",
                  flush=True)
        assert not any(Path(empty).iterdir()), "bytecode was written under the empty prefix"
    out = {"imports": IMPORTS, "rounds": args.rounds, "load_before": os.getloadavg()[0]}
    for case, values in runs.items():
        out[case] = {"wall_s_median": statistics.median(w for w, _ in values),
                     "cpu_s_median": statistics.median(c for _, c in values), "runs": values}
    out["ratio_wall"] = out["source"]["wall_s_median"] / out["bytecode"]["wall_s_median"]
    out["ratio_cpu"] = out["source"]["cpu_s_median"] / out["bytecode"]["cpu_s_median"]
    print(f"{IMPORTS}\n  from source:   {out['source']['wall_s_median']:.1f} s wall, "
          f"{out['source']['cpu_s_median']:.1f} s CPU (median of {args.rounds})\n"
          f"  with bytecode: {out['bytecode']['wall_s_median']:.1f} s wall, "
          f"{out['bytecode']['cpu_s_median']:.1f} s CPU\n"
          f"  ratio: {out['ratio_wall']:.2f}x wall, {out['ratio_cpu']:.2f}x CPU")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
