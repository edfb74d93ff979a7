"""The train stage on the CPU, side by side: this checkout against another (e.g. an older commit).

Runs ``python -m pipelines.train`` exactly as ``make run`` does (local Ray, the committed
``params.yaml``, its own MLflow store and Ray storage in a temporary folder) for ``--epochs``
epochs, alternating the checkouts round by round so that the machine's drift hits both alike.
Each run reports the stage's own images/s (training steps only), the seconds per epoch
including validation and checkpoints, the stage's wall time, and the CPU seconds (user,
system) of every process of the run (the stage, Ray's processes, the training worker).

    git worktree add /tmp/old 5593448 && (cd /tmp/old && uv sync --frozen)
    uv run python bench/bench_cpu_train.py --other /tmp/old --epochs 4 --rounds 2 \\
        --json bench/results/cpu_train_stage.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_stage(checkout: Path, shards: Path, epochs: int, work: Path) -> dict[str, Any]:
    """One train stage of ``epochs`` epochs from ``checkout`` (its own venv); figures of the run."""
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    params["train"].update(epochs=epochs, storage=str(work / "ray"),
                           milestones=[m for m in params["train"]["milestones"] if m < epochs] or [epochs - 1],
                           warmup_epochs=min(params["train"]["warmup_epochs"], epochs - 1))
    params["track"]["tracking_uri"] = f"sqlite:///{work}/mlflow.db"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", PYTHONUNBUFFERED="1")
    cmd = [str(checkout / ".venv/bin/python"), "-m", "pipelines.train", "--params", str(work / "params.yaml"),
           "--shards", str(shards), "--out", str(work / "out")]
    cpu: dict[int, tuple[float, float]] = {}
    t0 = time.perf_counter()
    with open(work / "stage.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:  # every process of the run: the stage's tree and Ray's (raylet's children)
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for q in procs:
                try:
                    t = q.cpu_times()
                    cpu[q.pid] = (t.user, t.system)
                except psutil.Error:
                    pass
            time.sleep(0.5)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{checkout}: train stage failed ({proc.returncode}); see {work / 'stage.log'}")
    summary = json.loads((work / "out" / "train_summary.json").read_text())
    return {"images_per_s": summary["images_per_s"], "train_seconds": summary["train_seconds"],
            "epoch_seconds": summary["epoch_seconds_total"] / summary["epochs"],
            "stage_wall_s": wall, "cpu_user_s": sum(u for u, _ in cpu.values()),
            "cpu_system_s": sum(s for _, s in cpu.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", required=True, help="the other checkout (with its own .venv)")
    ap.add_argument("--shards", default=str(REPO / "data/shards"), help="prepared shards of the default")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    checkouts = {"this": REPO, "other": Path(args.other).resolve()}
    info = {"load_before": os.getloadavg(), "epochs": args.epochs, "other": str(checkouts["other"]),
            "commits": {k: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=v, capture_output=True,
                                          text=True).stdout.strip() for k, v in checkouts.items()}}
    print(json.dumps(info), flush=True)
    runs: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        order = ["other", "this"] if rnd % 2 == 0 else ["this", "other"]
        for name in order:
            work = Path(tempfile.mkdtemp(prefix=f"bench-cpu-train-{name}-"))
            try:
                r = {"round": rnd, "checkout": name, **run_stage(checkouts[name], Path(args.shards),
                                                                  args.epochs, work)}
            finally:
                shutil.rmtree(work, ignore_errors=True)
            r["load"] = os.getloadavg()[0]
            runs.append(r)
            print(json.dumps(r), flush=True)
    mean = {name: {k: sum(r[k] for r in runs if r["checkout"] == name) / args.rounds
                   for k in ("images_per_s", "epoch_seconds", "stage_wall_s", "cpu_user_s", "cpu_system_s")}
            for name in checkouts}
    summary = {"mean": mean,
               "images_per_s_ratio": mean["this"]["images_per_s"] / mean["other"]["images_per_s"],
               "epoch_seconds_ratio": mean["other"]["epoch_seconds"] / mean["this"]["epoch_seconds"],
               "stage_wall_ratio": mean["other"]["stage_wall_s"] / mean["this"]["stage_wall_s"]}
    print(json.dumps({"summary": summary}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
