"""Ray Train overhead: the same training run through Ray Train (one worker) and without Ray
(the same ``Trainer`` in this process), measured in the same run, on CPU.

Both runs train the same configuration from the same seed on the same shards. Reported:
training images/s (time inside the epochs' steps, from each run's history), end-to-end
wall time (for Ray: cluster start, worker start-up, checkpoints and reports included), and
whether the two runs end with the same weights (they should: same seed, same data order),
the images/s of every epoch (Ray starts its helper actors during the first epochs), and the
CPU seconds every process used during each run (Ray's daemons and actors by name). With
``--order prrp`` the runs alternate so that a drift of the machine's speed cancels.

    uv run python bench/bench_ray_overhead.py --epochs 4
    uv run python bench/bench_ray_overhead.py --epochs 8 --order prrp   # drift cancels
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import psutil
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vireid.config import config_from_dict, replace  # noqa: E402
from vireid.data.prepare import prepare  # noqa: E402
from vireid.data.synthetic import generate_sysu  # noqa: E402
from vireid.training.checkpoint import load_model  # noqa: E402
from vireid.training.loop import Trainer  # noqa: E402
from vireid.training.ray_train import fit  # noqa: E402


def _group(proc: psutil.Process, driver: int) -> str:
    """A short name for a process of this benchmark: the driver, a Ray daemon or a Ray actor."""
    if proc.pid == driver:
        return "driver (this process)"
    if proc.pid == os.getpid():
        return "CPU sampler (this benchmark)"
    try:
        name, cmd = proc.name(), proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if name.startswith("ray::") or name in ("raylet", "gcs_server"):
        return name  # ray::RayTrainWorker, ray::TrainController, ray::IDLE, ...
    script = next((Path(a).name for a in cmd[1:2] if a.endswith(".py")), "")
    if script == "default_worker.py":
        return "ray worker (starting)"
    return script or name  # dashboard/agent.py, log_monitor.py, monitor.py, ...


def _sample_until_told(conn: Connection, interval: float, t0: float, driver: int) -> None:
    """The sampler process: CPU seconds of every process every ``interval`` s until ``conn``
    receives a message; then sends back ``{group: cpu seconds}``."""
    first: dict = {}
    last: dict = {}
    names: dict = {}

    def sample() -> None:
        for proc in psutil.process_iter():
            try:
                t, created = proc.cpu_times(), proc.create_time()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            key = (proc.pid, created)
            first.setdefault(key, t.user + t.system if created < t0 else 0.0)
            last[key] = t.user + t.system
            name = _group(proc, driver)  # the last known name: Ray renames its workers
            if name != "?" or key not in names:
                names[key] = name

    sample()
    conn.send("started")
    while not conn.poll(interval):
        sample()
    sample()
    out: dict[str, float] = {}
    for key, used in last.items():
        out[names[key]] = out.get(names[key], 0.0) + used - first[key]
    conn.send(out)


class CpuAccount:
    """CPU seconds used by every process on the machine while it runs, grouped by :func:`_group`.

    The sampling runs in a forked process, so it never holds the GIL of a loop measured in
    this process. Samples every ``interval`` seconds; a process's last sample counts (a
    short-lived process between two samples is missed: the figures are lower bounds).
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.used: dict[str, float] = {}

    def __enter__(self) -> CpuAccount:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_sample_until_told, daemon=True,
                                 args=(child, self.interval, time.time(), os.getpid()))
        self._proc.start()
        self._conn.recv()  # the first sample is taken
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self.used = self._conn.recv()
        self._proc.join()

    def by_group(self) -> dict[str, float]:
        return dict(sorted(((k, round(v, 1)) for k, v in self.used.items() if v >= 0.1),
                           key=lambda kv: -kv[1]))


def _plain(cfg, shards: Path, out: Path) -> tuple[list[dict], float]:
    """The training loop without Ray, in this process: (history, wall seconds)."""
    torch.set_num_threads(cfg.train.cpus_per_worker)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, shards)
    for _ in range(cfg.train.epochs):
        trainer.run_epoch()
    trainer.save_model(out / "model.pt")
    return trainer.history, time.perf_counter() - t0


def _ray(cfg, shards: Path, out: Path) -> tuple[list[dict], float]:
    """The same loop through Ray Train with one worker (fresh Ray, fresh run): (history, wall)."""
    t0 = time.perf_counter()
    summary = fit(cfg, shards, out, out / "ray_results", name=f"bench-{out.name}")
    return summary["history"], time.perf_counter() - t0


def _rate(hist: list[dict]) -> float:
    """Training images/s inside the steps of the epochs in ``hist``."""
    return sum(float(r["images"]) for r in hist) / sum(float(r["seconds"]) for r in hist)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--order", default="pr",
                    help="the runs in order, p = plain and r = Ray (e.g. prrp: drift cancels)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first epoch is also reported apart)")
    if not args.order or set(args.order) - {"p", "r"} or {"p", "r"} - set(args.order):
        ap.error(f"--order {args.order!r}: use the letters p and r, each at least once")
    base = config_from_dict(yaml.safe_load(Path(args.params).read_text()))
    cfg = replace(base, train={"epochs": args.epochs, "num_workers": 1, "checkpoint_every": 1})
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        generate_sysu(root / "SYSU-MM01", cfg.data.synth)
        prepare(replace(cfg, data={"root": str(root / "SYSU-MM01")}).data, root / "shards")
        for i, kind in enumerate(args.order):
            out = root / f"run{i}"
            out.mkdir()
            load0 = os.getloadavg()[0]
            # Both kinds are sampled the same way, so the sampling's own CPU cost falls on both.
            with CpuAccount() as account:
                hist, wall = (_plain if kind == "p" else _ray)(cfg, root / "shards", out)
            model, _ = load_model(out / "model.pt", "cpu")
            runs.append({"kind": "plain" if kind == "p" else "ray", "wall_s": round(wall, 1),
                         "images_per_s": round(_rate(hist), 2),
                         "images_per_s_after_epoch_1": round(_rate(hist[1:] or hist), 2),
                         "images_per_s_by_epoch": [round(float(r["images"]) / float(r["seconds"]), 1)
                                                   for r in hist],
                         "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
                         "cpu_seconds_by_process": account.by_group(),
                         "weights": [v.clone() for v in model.state_dict().values()]})
            print(f"run {i} ({runs[-1]['kind']}): {runs[-1]['images_per_s']} images/s, "
                  f"{wall:.0f} s wall", flush=True)
    ref = runs[0]["weights"]
    same = all(all(torch.equal(x, y) for x, y in zip(ref, r["weights"], strict=True)) for r in runs)
    for r in runs:
        del r["weights"]

    def pooled(kind: str, key: str) -> float:
        """Mean over the runs of one kind (each run weighs the same)."""
        vals = [r[key] for r in runs if r["kind"] == kind]
        return sum(vals) / len(vals)

    out = {
        "epochs": cfg.train.epochs, "cpus": cfg.train.cpus_per_worker, "cores": psutil.cpu_count(),
        "order": args.order,
        "plain_images_per_s": pooled("plain", "images_per_s"),
        "ray_images_per_s": pooled("ray", "images_per_s"),
        "step_overhead": pooled("plain", "images_per_s") / pooled("ray", "images_per_s") - 1,
        "step_overhead_after_epoch_1": (pooled("plain", "images_per_s_after_epoch_1")
                                        / pooled("ray", "images_per_s_after_epoch_1") - 1),
        "plain_wall_s": pooled("plain", "wall_s"), "ray_wall_s": pooled("ray", "wall_s"),
        "wall_overhead": pooled("ray", "wall_s") / pooled("plain", "wall_s") - 1,
        "same_final_weights": same,
        "runs": runs,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
