"""The ablation of docs/method.md, measured on the synthetic data.

Five configurations of one code path (METHOD.md, "The ablation"), each trained with
several seeds on the same prepared shards (single process, no Ray: the same ``Trainer``
the Ray workers run) and evaluated with the SYSU-MM01 protocol of ``params.yaml``
(all-search single-shot by default, 10 gallery trials). Prints a Markdown table of the
mean and spread (population std over seeds) and writes the raw numbers as JSON.

    uv run python bench/ablation.py --seeds 0 1 2 --epochs 12 --json bench/results/ablation.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.evaluate import evaluate, samples_of  # noqa: E402
from vireid.config import Config, config_from_dict, replace  # noqa: E402
from vireid.data.prepare import prepare  # noqa: E402
from vireid.data.shards import ShardSet  # noqa: E402
from vireid.data.synthetic import generate_sysu  # noqa: E402
from vireid.evaluation.sysu import sysu_protocol  # noqa: E402
from vireid.training.loop import Trainer  # noqa: E402

CONFIGS: dict[str, dict[str, dict[str, object]]] = {
    "baseline": {"model": {"fusion": False, "memory": False}, "loss": {"distill": False}},
    "+ fusion": {"model": {"fusion": True, "memory": False}, "loss": {"distill": False}},
    "+ memory": {"model": {"fusion": True, "memory": True}, "loss": {"distill": False}},
    "+ distillation (static)": {"model": {"fusion": True, "memory": True},
                                "loss": {"distill": True, "dynamic": False}},
    "+ distillation (dynamic) = full": {"model": {"fusion": True, "memory": True},
                                        "loss": {"distill": True, "dynamic": True}},
}
METRICS = ("rank1", "mAP", "mINP")


def run_one(cfg: Config, shards: Path, work: Path, device: torch.device) -> dict[str, float]:
    """Train one configuration and evaluate it; return the headline protocol's means."""
    trainer = Trainer(cfg, shards, device=device)
    for _ in range(cfg.train.epochs):
        trainer.run_epoch()
    model_path = trainer.save_model(work / "model.pt")
    metrics = evaluate(cfg, model_path, shards, work / "eval", device)
    key = cfg.eval.headline.rsplit("/", 1)[0]
    return {m: float(metrics[f"{key}/{m}"]) for m in METRICS}


def chance_level(cfg: Config, shards: Path, draws: int = 20) -> dict[str, float]:
    """The headline protocol's means on random unit embeddings (the chance level), percent,
    averaged over ``draws`` draws."""
    mode, shot = cfg.eval.headline.split("/")[1:3]
    tables = ShardSet(shards)
    q, g = tables.table("query"), tables.table("gallery")
    query, pool = samples_of(q, "query"), samples_of(g, "gallery")
    rng = np.random.default_rng(0)
    sums = dict.fromkeys(METRICS, 0.0)
    for _ in range(draws):
        f = rng.standard_normal((len(q) + len(g), 64)).astype(np.float32)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        means, _ = sysu_protocol(query, f[:len(q)], pool, f[len(q):], mode=mode, shot=shot,
                                 trials=cfg.eval.trials).mean_std()
        for m in METRICS:
            sums[m] += 100.0 * means[m] / draws
    return sums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=0, help="override train.epochs (0: keep)")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--loader-workers", type=int, default=-1, help="override train.loader_workers")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    device = torch.device(args.device)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    base = config_from_dict(yaml.safe_load(Path(args.params).read_text()))
    # one protocol (the headline), and the pipeline's settings otherwise
    mode, shot = base.eval.headline.split("/")[1:3]
    train = {"epochs": args.epochs or base.train.epochs}
    if args.loader_workers >= 0:
        train["loader_workers"] = args.loader_workers
    base = replace(base, eval={"sysu_modes": [mode], "sysu_shots": [shot]}, train=train)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in args.configs}
    with tempfile.TemporaryDirectory(prefix="ablation-") as tmp:
        root = Path(tmp)
        generate_sysu(root / "SYSU-MM01", base.data.synth)
        data_cfg = replace(base, data={"root": str(root / "SYSU-MM01")}).data
        prepare(data_cfg, root / "shards")
        chance = chance_level(base, root / "shards")
        print(json.dumps({"config": "chance (random embeddings)", **chance}), flush=True)
        for seed in args.seeds:  # every configuration of a seed before the next seed
            for name in args.configs:
                cfg = replace(base, train={"seed": seed}, **CONFIGS[name])  # type: ignore[arg-type]
                t0 = time.perf_counter()
                r = run_one(cfg, root / "shards", root / f"run-{len(results[name])}-{seed}", device)
                r["seconds"] = time.perf_counter() - t0
                results[name].append(r)
                print(json.dumps({"config": name, "seed": seed, **r}), flush=True)
                if args.json:  # after every run, so a cut-off run keeps what it measured
                    Path(args.json).write_text(json.dumps(
                        {"seeds": args.seeds, "epochs": base.train.epochs, "device": str(device),
                         "protocol": base.eval.headline, "chance": chance, "results": results},
                        indent=2))
    head = f"| configuration | {' | '.join(METRICS)} |"
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), "
          f"{base.train.epochs} epochs, protocol {base.eval.headline.rsplit('/', 1)[0]} "
          f"({base.eval.trials} gallery trials), mean ± std over seeds, percent\n")
    print(head)
    print("|" + "---|" * (len(METRICS) + 1))
    for name, rows in results.items():
        cells = []
        for m in METRICS:
            v = np.array([r[m] for r in rows])
            cells.append(f"{v.mean():.2f} ± {v.std():.2f}")
        print(f"| {name} | {' | '.join(cells)} |")
    print(f"| chance (random embeddings) | {' | '.join(f'{chance[m]:.2f}' for m in METRICS)} |")


if __name__ == "__main__":
    main()
