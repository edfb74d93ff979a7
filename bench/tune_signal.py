"""Does the tune stage's search signal beat the noise between training seeds? (issue #23)

Reads `bench/ablation.py` result files of a few (S, T) configurations, each trained with
several training seeds at the tune stage's trial budget (`--set model.memory_size=S
loss.temperature=T train.milestones=[] train.validate_every=1 --epochs 12`), and judges every
run with each candidate rule a search could rank trials by:

- ``last``: held-out val_mAP at the last epoch (what `tune` ranks survivors on today);
- ``best``: the best val_mAP of the run;
- ``mean_last3`` / ``mean_last6``: the mean val_mAP of the last 3 / 6 epochs;
- ``mean_after_warmup``: the mean val_mAP after the warm-up epochs (area under the curve);
- ``both_directions_last3``: the last 3 epochs of infrared->visible and visible->infrared mAP;
- ``test_last`` / ``test_selected``: test mAP (64 identities, 10 gallery trials) of the last /
  the selected epoch: no search can see these; they show whether the configurations differ
  at all when measured on 4x the identities.

For each rule: the configurations' means, the spread of those means (between), the pooled
standard deviation between seeds of one configuration (within), the one-way ANOVA
F = MS_between / MS_within (F ~ 1 or below: the configurations do not differ beyond seed
noise), Kendall's W of the configurations' ranks over the seeds (1: every seed ranks them
alike; 0: no agreement), and the smallest difference between two configurations that a search
judging one seed per trial resolves at 95 % (1.96 x sqrt(2) x within).

    uv run --frozen python bench/tune_signal.py bench/results/tune_signal/signal_*.json

Positive control: the same rules on configurations known to differ (the ablation at the full
budget, 5 seeds; test mAP baseline - full = +3.7 [2.3, 5.1]):

    uv run --frozen python bench/tune_signal.py bench/results/ablation_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics as st
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Curve = Sequence[Mapping[str, float]]


def _val(curve: Curve, key: str = "val_mAP") -> list[float]:
    return [e[key] for e in curve if key in e]


def rules(warmup_epochs: int) -> dict[str, Callable[[Mapping[str, Any]], float]]:
    """The judgments, each a function of one `bench/ablation.py` run record."""
    return {
        "last": lambda r: _val(r["curve"])[-1],
        "best": lambda r: max(_val(r["curve"])),
        "mean_last3": lambda r: st.mean(_val(r["curve"])[-3:]),
        "mean_last6": lambda r: st.mean(_val(r["curve"])[-6:]),
        "mean_after_warmup": lambda r: st.mean(
            [e["val_mAP"] for e in r["curve"] if "val_mAP" in e and e["epoch"] > warmup_epochs]),
        "both_directions_last3": lambda r: st.mean(_val(r["curve"])[-3:] + _val(r["curve"], "val_v2i_mAP")[-3:]),
        "test_last": lambda r: r["last"]["mAP"] / 100,
        "test_selected": lambda r: r["selected"]["mAP"] / 100,
    }


def _ranks(xs: Sequence[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    for rank, i in enumerate(order, 1):
        ranks[i] = float(rank)
    return ranks


def signal(values: Mapping[str, Mapping[int, float]]) -> dict[str, Any]:
    """``values[config][seed]``: one judgment of every run. Every configuration must hold the
    same seeds (Kendall's W pairs them), at least 2 configurations and 2 seeds."""
    configs = list(values)
    seeds = sorted(values[configs[0]])
    if len(configs) < 2 or len(seeds) < 2 or any(sorted(values[c]) != seeds for c in configs):
        raise ValueError(f"need >= 2 configurations with the same >= 2 seeds, got "
                         f"{ {c: sorted(v) for c, v in values.items()} }")
    k, n = len(configs), len(seeds)
    means = {c: st.mean(values[c].values()) for c in configs}
    ms_within = st.mean(st.variance(values[c].values()) for c in configs)
    ms_between = n * st.variance(means.values())
    # Kendall's W: seeds are the raters, configurations the ranked items
    rank_sums = [0.0] * k
    for s in seeds:
        for i, r in enumerate(_ranks([values[c][s] for c in configs])):
            rank_sums[i] += r
    mean_sum = n * (k + 1) / 2
    w = 12 * sum((r - mean_sum) ** 2 for r in rank_sums) / (n**2 * (k**3 - k))
    within = math.sqrt(ms_within)
    return {"means": means, "sd_between_means": st.stdev(means.values()), "sd_within": within,
            "F": ms_between / ms_within if ms_within > 0 else math.inf, "kendall_W": w,
            "resolvable_difference": 1.96 * math.sqrt(2) * within}


def load(paths: Sequence[Path]) -> tuple[dict[str, dict[int, Mapping[str, Any]]], int]:
    """Runs by configuration and seed; the warm-up epochs. A file with S/T overrides (the
    signal study) names its runs by them; an ablation file by its configurations."""
    runs: dict[str, dict[int, Mapping[str, Any]]] = {}
    warmup = 0
    for path in paths:
        data = json.loads(path.read_text())
        sets = dict(s.split("=", 1) for s in data.get("overrides", []))
        st_label = " ".join(f"{k}={sets[key]}" for k, key in (("S", "model.memory_size"), ("T", "loss.temperature"))
                            if key in sets)
        warmup = int(sets.get("train.warmup_epochs", 3))
        for config, records in data["results"].items():
            for r in records:  # named by the file's S/T overrides, else by the ablation's configuration
                runs.setdefault(st_label or config, {})[r["seed"]] = r
    return runs, warmup


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--json", default="", help="write the figures here too")
    args = ap.parse_args(argv)
    runs, warmup = load(args.files)
    runs = {c: r for c, r in runs.items() if r}
    out: dict[str, Any] = {}
    configs = list(runs)
    print(f"{len(configs)} configurations x seeds {sorted(runs[configs[0]])}; warm-up {warmup} epochs")
    print("| rule | " + " | ".join(configs) + " | sd between means | sd within (seeds) | F | Kendall W | resolvable Δ (1 seed) |")
    print("|---|" + "---|" * (len(configs) + 5))
    for rule, judge in rules(warmup).items():
        fig = signal({c: {s: judge(r) for s, r in runs[c].items()} for c in configs})
        out[rule] = fig
        print(f"| {rule} | " + " | ".join(f"{fig['means'][c]:.3f}" for c in configs)
              + f" | {fig['sd_between_means']:.4f} | {fig['sd_within']:.4f} | {fig['F']:.2f}"
              f" | {fig['kendall_W']:.2f} | {fig['resolvable_difference']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
