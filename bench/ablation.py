"""The ablation of docs/method.md, measured on the synthetic data.

Five configurations of one code path (METHOD.md, "The ablation"), each trained with
several seeds on the same prepared shards (single process, no Ray: the same ``Trainer``
the Ray workers run) and evaluated with the headline protocol of ``params.yaml`` (SYSU-MM01
all-search single-shot by default, 10 gallery trials; with ``data.dataset: regdb`` the RegDB
layout and its headline direction, e.g. ``regdb/v2t/mAP``, on ``data.regdb_trial``), for the
selected epoch (best held-out validation mAP) and the last epoch. Reports each
configuration's mean and spread, the paired per-seed difference to the baseline with a 95 %
confidence interval (Student t over seeds), the chance level of the same protocol, and every
run's validation curve.

    uv run python bench/ablation.py --seeds 0 1 2 3 4 --json bench/results/ablation_cpu.json \
        --plot docs/img/ablation_curves.png

``--shards DIR`` reuses prepared shards (else the tree of ``params.yaml``'s ``data.synth`` is
generated and prepared in a temporary folder). With ``--json`` every finished run is written
at once, and a rerun with the same file skips the runs it already holds (resumable).
``--keep DIR`` keeps what a later measurement needs: the prepared shards (``DIR/shards``,
reused by a rerun with the same ``DIR``) and every run's selected model file
(``DIR/<configuration>-seed<N>.pt``, its training config in its metadata), e.g. for
``bench/loss_gradients.py --shards DIR/shards --model DIR/a+b+c+e-seed4.pt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vireid.config import Config, config_from_dict, replace  # noqa: E402
from vireid.data.prepare import prepare  # noqa: E402
from vireid.data.shards import ShardSet  # noqa: E402
from vireid.data.synthetic import generate_regdb, generate_sysu  # noqa: E402
from vireid.evaluation.chance import chance_level as random_chance  # noqa: E402
from vireid.evaluation.regdb import regdb_protocol  # noqa: E402
from vireid.evaluation.sysu import sysu_protocol  # noqa: E402
from vireid.stages.evaluate import evaluate, samples_of  # noqa: E402
from vireid.training.checkpoint import cpu_state_dict, save_model  # noqa: E402
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
# The cross-modal readings of docs/method.md ("Readings that carry features across modalities"),
# registered before any of them was measured; the full method's other switches as committed.
_FULL = {"fusion": True, "memory": True}
READINGS: dict[str, dict[str, dict[str, object]]] = {
    "a: other-modality memory": {"model": {**_FULL, "memory_views": "other"}, "loss": {"distill": True}},
    "b: infer toward other-modality memory": {"model": {**_FULL, "memory_views": "other"},
                                              "loss": {"distill": True, "infer": "memory"}},
    "b': infer toward fused pair": {"model": _FULL, "loss": {"distill": True, "infer": "fused"}},
    "c: dual probes": {"model": {**_FULL, "dual_probe": True}, "loss": {"distill": True}},
    "e: distillation from 30 %": {"model": _FULL, "loss": {"distill": True, "distill_start": 0.3}},
    "a+b+c+e": {"model": {**_FULL, "memory_views": "other", "dual_probe": True},
                "loss": {"distill": True, "infer": "memory", "distill_start": 0.3}},
    "d: mid-level fusion (layer 2)": {"model": {**_FULL, "fusion_layer": 2}, "loss": {"distill": True}},
    "f: cross-classifier consistency": {"model": {**_FULL, "cross_consistency": True}, "loss": {"distill": True}},
    "a+b+c+d+e": {"model": {**_FULL, "memory_views": "other", "dual_probe": True, "fusion_layer": 2},
                  "loss": {"distill": True, "infer": "memory", "distill_start": 0.3}},
    "a+b+c+e+f": {"model": {**_FULL, "memory_views": "other", "dual_probe": True, "cross_consistency": True},
                  "loss": {"distill": True, "infer": "memory", "distill_start": 0.3}},
}
CONFIGS.update(READINGS)
METRICS = ("rank1", "mAP", "mINP")
CURVE_KEYS = ("val_mAP", "val_rank1", "val_v2i_mAP", "loss", "id", "tri", "dual", "fuse", "kd", "infer", "cc", "kdw_fuse",
              "kdw_mem", "conf_student", "conf_fuse", "conf_mem", "seconds")


def run_one(cfg: Config, shards: Path, work: Path, device: torch.device, label: str = "") -> dict[str, Any]:
    """Train one configuration; evaluate the selected and the last epoch on the headline
    protocol. Returns ``selected`` and ``last`` (metric means, percent), ``selected_epoch``
    and the per-epoch ``curve`` (validation mAP / Rank-1 where validated, training loss).
    A progress line per epoch goes to stderr, prefixed with ``label``."""
    trainer = Trainer(cfg, shards, device=device)
    curve: list[dict[str, float]] = []
    for _ in range(cfg.train.epochs):
        record = trainer.run_epoch()
        curve.append({"epoch": record["epoch"],
                      **{k: float(record[k]) for k in CURVE_KEYS if k in record}})
        val = f" val_mAP {record['val_mAP']:.3f}" if "val_mAP" in record else ""
        print(f"{label} epoch {int(record['epoch'])}/{cfg.train.epochs}: loss {record.get('loss', float('nan')):.3f}"
              f"{val} ({record.get('seconds', 0.0):.0f} s)", file=sys.stderr, flush=True)
    key = cfg.eval.headline.rsplit("/", 1)[0]
    out: dict[str, Any] = {"selected_epoch": trainer.best.epoch if trainer.best else cfg.train.epochs,
                           "curve": curve}
    weights, meta = trainer.selected()
    last = {**meta, "selected_epoch": trainer.epoch, "selection": "last epoch (ablation)"}
    for name, state, m in (("selected", weights, meta), ("last", cpu_state_dict(trainer.model), last)):
        path = save_model(work / f"{name}.pt", state, m)
        metrics = evaluate(cfg, path, shards, work / f"eval-{name}", device)
        out[name] = {x: float(metrics[f"{key}/{x}"]) for x in METRICS}
    return out


def kept_model_path(keep: Path, name: str, seed: int) -> Path:
    """Where ``--keep`` puts a run's selected model: the configuration's name with every run of
    characters other than letters, digits, ``+``, ``.`` and ``-`` made one ``_``."""
    slug = re.sub(r"[^A-Za-z0-9+.-]+", "_", name).strip("_")
    return keep / f"{slug}-seed{seed}.pt"


def keep_model(run_dir: Path, keep: Path, name: str, seed: int) -> Path:
    """Copy a finished run's ``selected.pt`` (written by :func:`run_one`) to
    :func:`kept_model_path`, through a temporary name (never a half-copied file)."""
    dest = kept_model_path(keep, name, seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(run_dir / "selected.pt", tmp)
    tmp.replace(dest)
    return dest


def chance_level(cfg: Config, shards: Path, draws: int = 10) -> dict[str, float]:
    """The headline protocol's means on random unit embeddings (the chance level), percent,
    averaged over ``draws`` draws (:func:`vireid.evaluation.chance.chance_level`, as the
    evaluate stage computes it): SYSU-MM01's mode and shot, or RegDB's direction on the
    shards' trial (query table visible, gallery thermal, as the evaluate stage reads them)."""
    tables = ShardSet(shards)
    q, g = tables.table("query"), tables.table("gallery")
    parts = cfg.eval.headline.split("/")
    if parts[0] == "regdb":
        trial = int(tables.manifest.get("regdb_trial") or cfg.data.regdb_trial)

        def protocol(qf: np.ndarray, gf: np.ndarray) -> dict[str, float]:
            r = regdb_protocol(qf, q.identity, gf, g.identity, trial=trial, model_trial=trial,
                               directions=[parts[1]])[parts[1]].summary()
            return {m: 100.0 * r[m] for m in METRICS}
    else:
        mode, shot = parts[1:3]
        query, pool = samples_of(q, "query"), samples_of(g, "gallery")

        def protocol(qf: np.ndarray, gf: np.ndarray) -> dict[str, float]:
            means, _ = sysu_protocol(query, qf, pool, gf, mode=mode, shot=shot,
                                     trials=cfg.eval.trials).mean_std()
            return {m: 100.0 * means[m] for m in METRICS}

    return random_chance(protocol, len(q), len(g), draws=draws)


def prepare_draw(cfg: Config, root: Path, shards: Path) -> Path:
    """Generate the synthetic tree of ``cfg.data.synth`` in ``root`` in ``cfg.data.dataset``'s
    layout (SYSU-MM01 or RegDB) and prepare its shards (RegDB: split trial
    ``cfg.data.regdb_trial``) in ``shards``."""
    if cfg.data.dataset == "regdb":
        tree = generate_regdb(root / "RegDB", cfg.data.synth)
    else:
        tree = generate_sysu(root / "SYSU-MM01", cfg.data.synth)
    return prepare(replace(cfg, data={"root": str(tree)}).data, shards)


def headline_only(cfg: Config) -> Config:
    """``cfg`` evaluating only the headline protocol (SYSU-MM01: its mode and shot; RegDB's
    evaluation runs both directions of one trial, the headline picks one)."""
    parts = cfg.eval.headline.split("/")
    if parts[0] != "sysu":
        return cfg
    return replace(cfg, eval={"sysu_modes": [parts[1]], "sysu_shots": [parts[2]]})


def paired_ci(diffs: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided Student-t confidence interval."""
    from scipy import stats

    n = len(diffs)
    mean = float(diffs.mean())
    if n < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * diffs.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half


def report(data: dict[str, Any]) -> str:
    """Markdown tables: mean ± std per configuration and the paired difference to the baseline,
    for the selected and the last epoch."""
    results, chance = data["results"], data["chance"]
    lines = [f"{len(data['seeds'])} seeds, {data['epochs']} epochs, protocol {data['protocol']}, "
             "percent; std over seeds (ddof 1)", ""]
    for which in ("selected", "last"):
        lines += [f"**{which} epoch**", "",
                  "| configuration | seeds | Rank-1 | mAP | mINP | Δ Rank-1 vs baseline (95 % CI) "
                  "| Δ mAP vs baseline (95 % CI) |", "|---|---|---|---|---|---|---|"]
        base = {r["seed"]: r[which] for r in results.get("baseline", [])}
        for name, rows in results.items():
            if not rows:  # a configuration not run (e.g. "+ memory", docs/method.md)
                continue
            cells = []
            for m in METRICS:
                v = np.array([r[which][m] for r in rows])
                cells.append(f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}")
            deltas = []
            for m in ("rank1", "mAP"):
                paired = np.array([r[which][m] - base[r["seed"]][m] for r in rows if r["seed"] in base])
                if name == "baseline" or len(paired) == 0:
                    deltas.append("")
                else:
                    mean, lo, hi = paired_ci(paired)
                    deltas.append(f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]")
            lines.append(f"| {name} | {len(rows)} | {' | '.join(cells)} | {' | '.join(deltas)} |")
        lines.append(f"| chance (random embeddings) | | {chance['rank1']:.2f} | {chance['mAP']:.2f} "
                     f"| {chance['mINP']:.2f} | | |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(data: dict[str, Any], path: Path) -> Path:
    """Mean validation mAP per epoch of each configuration (one thin line per seed)."""
    from vireid.plotting import new_figure, save_png

    fig = new_figure((7, 4.2))
    ax = fig.subplots()
    for k, (name, rows) in enumerate(data["results"].items()):
        if not rows:
            continue
        colour = f"C{k}"
        curves = [[(c["epoch"], c["val_mAP"]) for c in r["curve"] if "val_mAP" in c] for r in rows]
        for c in curves:
            ax.plot(*zip(*c, strict=True), color=colour, alpha=0.25, lw=0.8)
        epochs = [e for e, _ in curves[0]]
        mean = np.mean([[v for _, v in c] for c in curves], axis=0)
        ax.plot(epochs, mean, color=colour, lw=2, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out val mAP (fraction)")
    ax.set_title("Validation mAP per epoch (thin: seeds, thick: mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(path, fig, dpi=110)


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result set from several (parallel runs of other seeds or configurations); they must
    share shards, protocol, epochs and overrides."""
    first = parts[0]
    for key in ("shards_sha256", "protocol", "epochs", "overrides"):
        values = {json.dumps(p.get(key)) for p in parts}
        if len(values) > 1:
            raise SystemExit(f"--merge: the files differ in {key}: {sorted(values)}")
    results: dict[str, list[dict[str, Any]]] = {}
    for p in parts:
        for name, rows in p["results"].items():
            have = {r["seed"] for r in results.setdefault(name, [])}
            results[name].extend(r for r in rows if r["seed"] not in have)
    order = [n for n in CONFIGS if results.get(n)] + [n for n in results if n not in CONFIGS and results[n]]
    return {**first, "seeds": sorted({s for p in parts for s in p["seeds"]}),
            "results": {n: sorted(results[n], key=lambda r: r["seed"]) for n in order}}


def selected_val(run: dict[str, Any]) -> float:
    """The held-out validation mAP (infrared query -> visible gallery: cross-modality) at the
    run's selected epoch, as a fraction."""
    return next(c["val_mAP"] for c in run["curve"] if c["epoch"] == run["selected_epoch"])


def pooled_pairs(parts: dict[str, dict[str, Any]], name: str, base: str = "baseline") -> list[dict[str, Any]]:
    """The (``base``, ``name``) pairs of every result file in ``parts`` (label -> file's data),
    one per (shards, training seed) that both configurations ran: the registered comparison
    pools pairs over generator seeds (draws). A pair found in two files is counted once."""
    pairs: dict[tuple[str, int], dict[str, Any]] = {}
    for label, data in parts.items():
        ours = {r["seed"]: r for r in data["results"].get(name, [])}
        for b in data["results"].get(base, []):
            if b["seed"] not in ours or (data["shards_sha256"], b["seed"]) in pairs:
                continue
            o = ours[b["seed"]]
            pairs[(data["shards_sha256"], b["seed"])] = {
                "draw": label, "seed": b["seed"],
                **{f"{w}_{m}": (b[w][m], o[w][m]) for w in ("selected", "last") for m in METRICS},
                "val_mAP": (selected_val(b), selected_val(o))}
    return list(pairs.values())


def pooled_report(pairs: list[dict[str, Any]], name: str, base: str = "baseline") -> str:
    """Per pair and pooled: the paired differences ``name - base`` with 95 % CIs (Student t over
    the pairs) of test mAP / Rank-1 (selected and last epoch) and the selected epoch's held-out
    cross-modality validation mAP."""
    lines = [f"| draw | seed | {base} mAP | {name} mAP | Δ mAP | Δ Rank-1 | held-out val_mAP {base} / {name} "
             "| Δ mAP, last epoch |", "|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        (b, o), (br, orr), (bl, ol), (bv, ov) = p["selected_mAP"], p["selected_rank1"], p["last_mAP"], p["val_mAP"]
        lines.append(f"| {p['draw']} | {p['seed']} | {b:.2f} | {o:.2f} | {o - b:+.2f} | {orr - br:+.2f} "
                     f"| {bv:.3f} / {ov:.3f} | {ol - bl:+.2f} |")
    lines.append("")
    for key, label, fmt in (("selected_mAP", "test mAP, selected epoch", "+.2f"),
                            ("selected_rank1", "test Rank-1, selected epoch", "+.2f"),
                            ("last_mAP", "test mAP, last epoch", "+.2f"),
                            ("val_mAP", "held-out cross-modality val_mAP, selected epoch", "+.3f")):
        mean, lo, hi = paired_ci(np.array([o - b for b, o in (p[key] for p in pairs)]))
        lines.append(f"- Δ {label}: {mean:{fmt}} [{lo:{fmt}}, {hi:{fmt}}] over {len(pairs)} pairs")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=0, help="override train.epochs (0: keep)")
    ap.add_argument("--configs", nargs="*", default=[n for n in CONFIGS if n not in READINGS],
                    help="configurations by name (default: the five of the ablation; the readings by name)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                    help="override params for every configuration (YAML values)")
    ap.add_argument("--shards", default="", help="prepared shards to reuse (default: generate and prepare)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (two 1-thread runs in parallel use 2 cores better)")
    ap.add_argument("--loader-workers", type=int, default=-1, help="override train.loader_workers")
    ap.add_argument("--json", default="", help="results file; runs it already holds are skipped")
    ap.add_argument("--plot", default="", help="PNG of the validation curves")
    ap.add_argument("--keep", default="", metavar="DIR",
                    help="keep the prepared shards (DIR/shards) and each run's selected model file in DIR")
    ap.add_argument("--merge", nargs="*", default=[], metavar="JSON",
                    help="only combine result files of parallel runs (same shards) into --json and report")
    ap.add_argument("--pool", nargs="*", default=[], metavar="LABEL=JSON",
                    help="only report the pairs of configuration --configs[0] and the baseline pooled over "
                         "result files of several draws, with paired 95 %% CIs")
    args = ap.parse_args()
    if args.pool:
        bad = [x for x in args.pool if "=" not in x or not x.split("=", 1)[0]]
        if bad:
            ap.error(f"--pool takes LABEL=JSON (the label names the draw in the table), got {bad}")
        parts = {label: json.loads(Path(f).read_text()) for label, f in (x.split("=", 1) for x in args.pool)}
        print(pooled_report(pooled_pairs(parts, args.configs[0]), args.configs[0]))
        return
    if args.merge:
        merged = merge_results([json.loads(Path(f).read_text()) for f in args.merge])
        if args.json:
            Path(args.json).write_text(json.dumps(merged, indent=1))
        print(report(merged))
        if args.plot:
            print(f"curves: {plot_curves(merged, Path(args.plot))}")
        return
    device = torch.device(args.device)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    base = config_from_dict(yaml.safe_load(Path(args.params).read_text()))
    # one protocol (the headline), and the pipeline's settings otherwise
    overrides: dict[str, dict[str, Any]] = {"train": {"epochs": args.epochs or base.train.epochs}}
    if args.loader_workers >= 0:
        overrides["train"]["loader_workers"] = args.loader_workers
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        overrides.setdefault(section, {})[name] = yaml.safe_load(value)
    base = headline_only(replace(base, **overrides))
    out = Path(args.json) if args.json else None
    data: dict[str, Any] = json.loads(out.read_text()) if out and out.exists() else {}
    results: dict[str, list[dict[str, Any]]] = data.get("results", {})
    for name in args.configs:
        results.setdefault(name, [])
    with tempfile.TemporaryDirectory(prefix="ablation-") as tmp:
        root = Path(tmp)
        keep = Path(args.keep) if args.keep else None
        shards = Path(args.shards) if args.shards else (keep or root) / "shards"
        if not args.shards and not (shards / "manifest.json").exists():
            prepare_draw(base, root, shards)
        chance = chance_level(base, shards)
        data.update(seeds=sorted({*data.get("seeds", []), *args.seeds}), epochs=base.train.epochs,
                    device=str(device), protocol=base.eval.headline, overrides=args.set,
                    shards_sha256=ShardSet(shards).manifest.get("sha256_total"), chance=chance,
                    results=results)
        print(json.dumps({"config": "chance (random embeddings)", **chance}), flush=True)
        for seed in args.seeds:  # every configuration of a seed before the next seed
            for name in args.configs:
                if any(r["seed"] == seed for r in results[name]):
                    continue
                cfg = replace(base, train={"seed": seed}, **CONFIGS[name])  # type: ignore[arg-type]
                t0 = time.perf_counter()
                run_dir = root / f"run-{name.replace(' ', '')}-{seed}"
                r = run_one(cfg, shards, run_dir, device, f"[{name} seed {seed}]")
                r.update(seed=seed, seconds=time.perf_counter() - t0)
                if keep:
                    r["model_file"] = str(keep_model(run_dir, keep, name, seed))
                results[name].append(r)
                print(json.dumps({"config": name, "seed": seed, "selected_epoch": r["selected_epoch"],
                                  "selected": r["selected"], "last": r["last"],
                                  "seconds": round(r["seconds"])}), flush=True)
                if out:  # after every run: a cut-off ablation keeps what it measured
                    tmp_json = out.with_name(f".{out.name}.tmp")
                    tmp_json.write_text(json.dumps(data, indent=1))
                    tmp_json.replace(out)
    print()
    print(report(data))
    if args.plot:
        print(f"curves: {plot_curves(data, Path(args.plot))}")


if __name__ == "__main__":
    main()
