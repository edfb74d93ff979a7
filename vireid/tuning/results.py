"""The search's results: trials collected from Tune, the summary, best_params.yaml and the outputs."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.tune
import yaml

from vireid.config import Config
from vireid.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from vireid.tuning.plot import plot
from vireid.tuning.space import TIME_ATTR, judged_metric, rung_epochs, trial_epochs

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def collect_trials(grid: ray.tune.ResultGrid, metric: str = "val_mAP") -> list[dict[str, Any]]:
    """Per trial: id, S, T, status, error and the per-epoch history of ``val_mAP`` and of the
    judged ``metric`` (``score``; :func:`vireid.tuning.space.judged_metric`)."""
    trials = []
    for result in grid:
        path = Path(result.path)
        trial_id = result.metrics.get("trial_id") if result.metrics else None
        df = result.metrics_dataframe
        history: list[dict[str, Any]] = []
        if df is not None and TIME_ATTR in df.columns:
            for _, row in df.iterrows():
                if row.get(TIME_ATTR) is None or not math.isfinite(float(row[TIME_ATTR])):
                    continue
                history.append({"epoch": int(row[TIME_ATTR]),
                                "val_mAP": _clean(row.get("val_mAP")),
                                "score": _clean(row.get(metric)),
                                "val_rank1": _clean(row.get("val_rank1")),
                                "loss": _clean(row.get("loss"))})
        # a restarted trial reports its epochs again: keep the last record of each epoch
        by_epoch = {h["epoch"]: h for h in history}
        trials.append({
            "trial_id": trial_id or path.name,
            "memory_size": int(result.config["memory_size"]),
            "temperature": float(result.config["temperature"]),
            "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}",
            "history": [by_epoch[e] for e in sorted(by_epoch)],
        })
    return sorted(trials, key=lambda t: t["trial_id"])


def summarize_search(cfg: Config, trials: Sequence[Mapping[str, Any]], *, name: str,
              experiment_path: str) -> dict[str, Any]:
    """The search in numbers: each trial's epochs, val_mAP and score (``tune.metric``),
    ASHA's savings, the best S/T.

    Best: the highest score (``tune.metric``) at the last epoch among trials that reached
    their full length, ``train.warmup_epochs + tune.epochs`` (ASHA's survivors); when none
    did, among all trials at their last epoch. A history without ``score`` (an older
    collection) is judged on ``val_mAP``.
    """
    max_t = trial_epochs(cfg)
    rows = []
    for t in trials:
        hist = [h for h in t["history"] if h["val_mAP"] is not None]
        scored = [h.get("score", h["val_mAP"]) for h in t["history"] if h.get("score", h["val_mAP"]) is not None]
        epochs_run = max((h["epoch"] for h in t["history"]), default=0)
        rows.append({
            "trial_id": t["trial_id"], "memory_size": t["memory_size"], "temperature": t["temperature"],
            "epochs_run": epochs_run,
            "final_val_mAP": hist[-1]["val_mAP"] if hist else None,
            "best_val_mAP": max((h["val_mAP"] for h in hist), default=None),
            "final_score": scored[-1] if scored else None,
            "early_stopped": t["error"] is None and 0 < epochs_run < max_t,
            "completed": t["error"] is None and epochs_run >= max_t,
            "error": t["error"],
        })
    full = [r for r in rows if r["completed"] and r["final_score"] is not None]
    pool = full or [r for r in rows if r["final_score"] is not None]
    best = max(pool, key=lambda r: r["final_score"]) if pool else None
    used = sum(r["epochs_run"] for r in rows)
    budget = len(rows) * max_t
    return {
        "experiment": name,
        "experiment_path": experiment_path,
        "metric": judged_metric(cfg), "mode": "max", "time_attr": TIME_ATTR,
        "scheduler": {"name": cfg.tune.scheduler.upper(), "max_t": max_t,
                      "warmup_epochs": cfg.train.warmup_epochs, "grace_period": cfg.tune.grace_period,
                      "reduction_factor": cfg.tune.reduction_factor, "rungs": rung_epochs(cfg)},
        "search": {"algorithm": "random (BasicVariantGenerator)", "seed": cfg.tune.seed,
                   "num_samples": cfg.tune.num_samples, "memory_sizes": list(cfg.tune.memory_sizes),
                   "temperature_range": [cfg.tune.temperature_min, cfg.tune.temperature_max],
                   "max_concurrent": cfg.tune.max_concurrent},
        "num_trials": len(rows),
        "num_early_stopped": sum(r["early_stopped"] for r in rows),
        "num_completed": sum(r["completed"] for r in rows),
        "num_errored": sum(r["error"] is not None for r in rows),
        "trial_epochs_used": used,
        "trial_epochs_full": budget,
        "trial_epochs_saved": budget - used,
        "best_rule": f"highest {judged_metric(cfg)} at the last epoch among trials that ran warm-up + tune.epochs",
        "best": None if best is None else {
            "trial_id": best["trial_id"], "memory_size": best["memory_size"],
            "temperature": best["temperature"], "val_mAP": best["final_val_mAP"], "score": best["final_score"],
            "epochs_run": best["epochs_run"]},
        "trials": rows,
    }


def best_params(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``{model: {memory_size: S}, loss: {temperature: T}}`` of the best trial."""
    best = summary["best"]
    if best is None:
        raise RuntimeError(f"Tune experiment {summary['experiment']}: no trial reported {summary['metric']}")
    return {"model": {"memory_size": int(best["memory_size"])},
            "loss": {"temperature": float(best["temperature"])}}


def write_outputs(summary: Mapping[str, Any], trials: Sequence[Mapping[str, Any]],
                  out_dir: str | Path) -> None:
    """``best_params.yaml``, ``summary.json``, ``tune.png`` in ``out_dir`` (atomically)."""
    out = Path(out_dir)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "best_params.yaml",
                      "# written by the tune stage (vireid.tuning): the best trial's S and T\n"
                      + yaml.safe_dump(best_params(summary), sort_keys=True))
    atomic_write_bytes(out / "tune.png", plot(summary, trials))
