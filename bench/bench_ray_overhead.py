"""Ray Train overhead: the same training run through Ray Train (one worker) and without Ray
(the same ``Trainer`` in this process), measured in the same run, on CPU.

Both runs train the same configuration from the same seed on the same shards. Reported:
training images/s (time inside the epochs' steps, from each run's history), end-to-end
wall time (for Ray: cluster start, worker start-up, checkpoints and reports included), and
whether the two runs end with the same weights (they should: same seed, same data order),
the images/s of every epoch (Ray starts its helper actors during the first epochs), and the
CPU seconds every process used during the Ray run (Ray's daemons and actors by name).

    uv run python bench/bench_ray_overhead.py --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
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


def _group(proc: psutil.Process) -> str:
    """A short name for a process of this benchmark: the driver, a Ray daemon or a Ray actor."""
    if proc.pid == os.getpid():
        return "driver (this process)"
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


class CpuAccount:
    """CPU seconds used by every process on the machine while it runs, grouped by :func:`_group`.

    Samples every ``interval`` seconds; a process's last sample counts (a short-lived process
    between two samples is missed: the figures are lower bounds).
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.first, self.last, self.names = interval, {}, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for proc in psutil.process_iter():
            try:
                t = proc.cpu_times()
                used = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            key = (proc.pid, proc.create_time())
            self.first.setdefault(key, used if proc.create_time() < self.t0 else 0.0)
            self.last[key] = used
            name = _group(proc)  # the last known name: Ray renames its workers
            if name != "?" or key not in self.names:
                self.names[key] = name

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuAccount:
        self.t0 = time.time()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall = time.time() - self.t0

    def by_group(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, used in self.last.items():
            out[self.names[key]] = out.get(self.names[key], 0.0) + used - self.first[key]
        return dict(sorted(((k, round(v, 1)) for k, v in out.items() if v >= 0.1),
                           key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    base = config_from_dict(yaml.safe_load(Path(args.params).read_text()))
    cfg = replace(base, train={"epochs": args.epochs, "num_workers": 1, "checkpoint_every": 1})
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        generate_sysu(root / "SYSU-MM01", cfg.data.synth)
        prepare(replace(cfg, data={"root": str(root / "SYSU-MM01")}).data, root / "shards")

        torch.set_num_threads(cfg.train.cpus_per_worker)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, root / "shards")
        for _ in range(cfg.train.epochs):
            trainer.run_epoch()
        trainer.save_model(root / "plain.pt")
        plain_wall = time.perf_counter() - t0
        plain_hist = trainer.history

        t0 = time.perf_counter()
        with CpuAccount() as account:
            summary = fit(cfg, root / "shards", root / "ray_out", root / "ray_results")
        ray_wall = time.perf_counter() - t0
        ray_hist = summary["history"]

        def step_rate(hist: list[dict]) -> float:
            return sum(float(r["images"]) for r in hist) / sum(float(r["seconds"]) for r in hist)

        a, _ = load_model(root / "plain.pt", "cpu")
        b, _ = load_model(root / "ray_out" / "model.pt", "cpu")
        same = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                                     strict=True))
    def epoch_rates(hist: list[dict]) -> list[float]:
        return [round(float(r["images"]) / float(r["seconds"]), 1) for r in hist]

    later = slice(1, None)  # epochs after the first: Ray's start-up is over
    out = {
        "epochs": cfg.train.epochs, "cpus": cfg.train.cpus_per_worker,
        "plain_images_per_s_by_epoch": epoch_rates(plain_hist),
        "ray_images_per_s_by_epoch": epoch_rates(ray_hist),
        "step_overhead_after_epoch_1": step_rate(plain_hist[later]) / step_rate(ray_hist[later]) - 1,
        "plain_images_per_s": step_rate(plain_hist), "ray_images_per_s": step_rate(ray_hist),
        "plain_wall_s": plain_wall, "ray_wall_s": ray_wall,
        "step_overhead": step_rate(plain_hist) / step_rate(ray_hist) - 1,
        "wall_overhead": ray_wall / plain_wall - 1,
        "same_final_weights": same,
        "ray_cpu_seconds_by_process": account.by_group(),
        "cores": psutil.cpu_count(),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
