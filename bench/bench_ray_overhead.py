"""Ray Train overhead: the same training run through Ray Train (one worker) and without Ray
(the same ``Trainer`` in this process), measured in the same run, on CPU.

Both runs train the same configuration from the same seed on the same shards. Reported:
training images/s (time inside the epochs' steps, from each run's history), end-to-end
wall time (for Ray: cluster start, worker start-up, checkpoints and reports included), and
whether the two runs end with the same weights (they should: same seed, same data order).

    uv run python bench/bench_ray_overhead.py --epochs 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vireid.config import config_from_dict, replace  # noqa: E402
from vireid.data.prepare import prepare  # noqa: E402
from vireid.data.synthetic import generate_sysu  # noqa: E402
from vireid.training.checkpoint import load_model  # noqa: E402
from vireid.training.loop import Trainer  # noqa: E402
from vireid.training.ray_train import fit  # noqa: E402


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
        summary = fit(cfg, root / "shards", root / "ray_out", root / "ray_results")
        ray_wall = time.perf_counter() - t0
        ray_hist = summary["history"]

        def step_rate(hist: list[dict]) -> float:
            return sum(float(r["images"]) for r in hist) / sum(float(r["seconds"]) for r in hist)

        a, _ = load_model(root / "plain.pt", "cpu")
        b, _ = load_model(root / "ray_out" / "model.pt", "cpu")
        same = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                                     strict=True))
    out = {
        "epochs": cfg.train.epochs, "cpus": cfg.train.cpus_per_worker,
        "plain_images_per_s": step_rate(plain_hist), "ray_images_per_s": step_rate(ray_hist),
        "plain_wall_s": plain_wall, "ray_wall_s": ray_wall,
        "step_overhead": step_rate(plain_hist) / step_rate(ray_hist) - 1,
        "wall_overhead": ray_wall / plain_wall - 1,
        "same_final_weights": same,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
