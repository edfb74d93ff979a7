"""The train stage on the CPU, side by side: this checkout against another (e.g. an older commit).

Runs ``python -m pipelines.train`` exactly as ``make run`` does (local Ray, the committed
``params.yaml``, its own MLflow store and Ray storage in a temporary folder) for ``--epochs``
epochs, alternating the checkouts round by round so that the machine's drift hits both alike.
Each run reports the stage's own images/s (training steps only), the seconds per epoch
including validation and checkpoints, the stage's wall time, and the CPU seconds (user,
system) of every process of the run (the stage, Ray's processes, the training worker).

    uv run python bench/bench_cpu_train.py --other 5593448 --epochs 4 --rounds 2 \\
        --json bench/results/cpu_train_stage.json

``--other`` is a folder (a checkout with its own ``.venv``) or a git revision of this repository:
then a temporary worktree of it is made, its locked environment installed (``uv sync --frozen``)
and both removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
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


def other_checkout(other: str, stack: contextlib.ExitStack) -> Path:
    """``other`` as a checkout: a folder as given, or a temporary worktree (with its venv) of a git revision."""
    if Path(other).is_dir():
        return Path(other).resolve()
    rev = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{other}^{{commit}}"], cwd=REPO,
                         capture_output=True, text=True)
    if rev.returncode != 0:
        raise SystemExit(f"error: --other {other!r} is neither a folder nor a git revision of {REPO}")
    tree = Path(tempfile.mkdtemp(prefix="bench-cpu-train-other-")) / "checkout"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), rev.stdout.strip()], cwd=REPO,
                   check=True)
    stack.callback(lambda: (subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO),
                            shutil.rmtree(tree.parent, ignore_errors=True)))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    print(f"installing {other}'s locked environment in {tree}", flush=True)
    subprocess.run([shutil.which("uv") or "uv", "sync", "--frozen", "--quiet"], cwd=tree, env=env, check=True)
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", required=True,
                    help="the other checkout (a folder with its own .venv) or a git revision of this repository")
    ap.add_argument("--shards", default=str(REPO / "data/shards"), help="prepared shards of the default")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        compare(args, other_checkout(args.other, stack))


def compare(args: argparse.Namespace, other: Path) -> None:
    """Alternating rounds of the train stage in this checkout and ``other``; prints and writes the figures."""
    checkouts = {"this": REPO, "other": other}
    info = {"load_before": os.getloadavg(), "epochs": args.epochs, "other": args.other,
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
    if args.json:  # whole or not at all
        tmp = Path(f"{args.json}.tmp")
        tmp.write_text(json.dumps({"info": info, "runs": runs, "summary": summary}, indent=2))
        tmp.replace(args.json)


if __name__ == "__main__":
    sys.exit(main())
