"""Evaluation outputs: ``metrics.json``, CMC CSV (for ``dvc plots``), CMC and ranked-list PNGs.

``metrics.json`` layout (all metric values in **percent**, i.e. fractions x 100, as the
``"units"`` field says)::

    {
      "units": "percent",
      "std_ddof": 0,
      "sysu/all/single": {"sampler": "community", "trials": 10, "trial_ids": [0, ..., 9],
                          "mean": {"rank1": .., "rank5": .., "rank10": .., "rank20": ..,
                                   "mAP": .., "mINP": ..},
                          "std": {...}, "per_trial": [{"trial": 0, "rank1": .., ...}, ...]},
      "sysu/all/single/mAP": ..,  "sysu/all/single/rank1": .., ...   (flat headline keys)
      "regdb/v2t": {...}, "regdb/v2t/mAP": .., ...
    }

Every file is written atomically (:mod:`vireid.io`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vireid.evaluation.metrics import METRIC_NAMES, summarize_trials
from vireid.io import atomic_write_json, atomic_write_text
from vireid.plotting import new_figure, save_png

#: Unit of every metric value in the report.
UNITS = "percent"

ImageSource = Sequence[np.ndarray] | Callable[[int], np.ndarray]


def _pct(values: Mapping[str, float]) -> dict[str, float]:
    return {k: 100.0 * float(values[k]) for k in METRIC_NAMES if k in values}


def protocol_entry(
    per_trial: Sequence[Mapping[str, float]],
    *,
    sampler: str,
    trial_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One protocol's entry from per-trial summaries in *fractions* (converted to percent)."""
    if not per_trial:
        raise ValueError("a protocol entry needs at least one trial")
    ids = list(range(len(per_trial))) if trial_ids is None else [int(t) for t in trial_ids]
    if len(ids) != len(per_trial):
        raise ValueError(f"{len(ids)} trial ids for {len(per_trial)} trial results")
    pct = [_pct(t) for t in per_trial]
    mean, std = summarize_trials(pct)
    return {
        "sampler": sampler,
        "trials": len(pct),
        "trial_ids": ids,
        "mean": mean,
        "std": std,
        "per_trial": [{"trial": t, **p} for t, p in zip(ids, pct, strict=True)],
    }


def sysu_entry(result: Any) -> dict[str, Any]:
    """Entry of a :class:`vireid.evaluation.sysu.ProtocolResult` (sampler recorded)."""
    return protocol_entry(result.per_trial, sampler=result.sampler,
                          trial_ids=[t.trial for t in result.trials])


def regdb_entries(aggregated: Mapping[str, Mapping[str, Any]], sampler: str = "regdb-idx") -> dict[str, dict[str, Any]]:
    """Entries ``regdb/<direction>`` from :func:`vireid.evaluation.regdb.aggregate_regdb`."""
    return {f"regdb/{d}": protocol_entry(a["per_trial"], sampler=sampler, trial_ids=a["trials"])
            for d, a in aggregated.items()}


def build_metrics(entries: Mapping[str, Mapping[str, Any]],
                  chance: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` object: entries plus flat ``<key>/<metric>`` headline keys.

    ``chance``: per protocol key, the metric means on random unit embeddings
    (:mod:`vireid.evaluation.chance`), stored as ``chance/<key>/<metric>``.
    """
    out: dict[str, Any] = {"units": UNITS, "std_ddof": 0}
    for key, means in (chance or {}).items():
        for name, value in means.items():
            out[f"chance/{key}/{name}"] = float(value)
    for key, entry in entries.items():
        for field in ("sampler", "trials", "mean", "std", "per_trial"):
            if field not in entry:
                raise ValueError(f"metrics entry {key!r} lacks {field!r}")
        out[key] = dict(entry)
        for name, value in entry["mean"].items():
            out[f"{key}/{name}"] = float(value)
    return out


def write_metrics(path: str | os.PathLike[str], entries: Mapping[str, Mapping[str, Any]],
                  chance: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """Write ``metrics.json`` (see the module docstring and :func:`build_metrics`) atomically."""
    return atomic_write_json(path, build_metrics(entries, chance))


def mean_curve(curves: Sequence[np.ndarray], length: int = 20) -> np.ndarray:
    """Mean of CMC curves (fractions) over trials, each padded flat to ``length``."""
    if not curves:
        raise ValueError("no curves to average")
    padded = []
    for c in curves:
        c = np.asarray(c, dtype=np.float64)[:length]
        padded.append(np.concatenate([c, np.full(length - len(c), c[-1] if len(c) else 0.0)]))
    return np.mean(padded, axis=0)


def write_cmc_csv(path: str | os.PathLike[str], curves: Mapping[str, np.ndarray]) -> Path:
    """CSV ``rank,<key>,...`` of CMC curves in percent, one row per rank (``dvc plots``)."""
    if not curves:
        raise ValueError("no curves to write")
    length = max(len(c) for c in curves.values())
    cols = {k: mean_curve([c], length) * 100.0 for k, c in curves.items()}
    lines = ["rank," + ",".join(cols)]
    for r in range(length):
        lines.append(f"{r + 1}," + ",".join(f"{cols[k][r]:.6f}" for k in cols))
    return atomic_write_text(path, "\n".join(lines) + "\n")


def plot_cmc(path: str | os.PathLike[str], curves: Mapping[str, np.ndarray], title: str = "CMC") -> Path:
    """CMC curves (fractions in, percent on the axis) as a PNG."""
    if not curves:
        raise ValueError("no curves to plot")
    fig = new_figure((6, 4))
    ax = fig.subplots()
    for key, c in curves.items():
        c = np.asarray(c, dtype=np.float64) * 100.0
        ax.plot(np.arange(1, len(c) + 1), c, marker="o", markersize=3, label=f"{key} (R1 {c[0]:.1f})")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_png(path, fig)


def _image(source: ImageSource, i: int) -> np.ndarray:
    img = np.asarray(source(i) if callable(source) else source[i])
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)  # [C,H,W] -> [H,W,C]
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.dtype != np.uint8:
        raise ValueError(f"image {i} must be uint8, got {img.dtype}")
    return img


def top_k(distmat: np.ndarray, k: int = 10, stable: bool = False) -> np.ndarray:
    """Gallery indices of the ``k`` nearest entries of each row, nearest first."""
    order = np.argsort(np.asarray(distmat), axis=1, kind="stable" if stable else None)
    return order[:, :k]


def plot_ranked_list(
    path: str | os.PathLike[str],
    query_indices: Sequence[int],
    ranked: np.ndarray,
    correct: np.ndarray,
    query_images: ImageSource,
    gallery_images: ImageSource,
    titles: Sequence[str] | None = None,
) -> Path:
    """One row per query: the query image, then its top-k gallery images with green
    (true match) or red (false match) borders.

    ``ranked[r]`` are gallery indices for query ``query_indices[r]``, ``correct[r]`` says
    which are true matches; images come from sequences or ``index -> uint8 image`` callables.
    """
    from matplotlib.patches import Rectangle

    ranked = np.atleast_2d(np.asarray(ranked))
    correct = np.atleast_2d(np.asarray(correct, dtype=bool))
    n, k = ranked.shape
    if correct.shape != ranked.shape or len(query_indices) != n:
        raise ValueError(f"ranked {ranked.shape}, correct {correct.shape} and {len(query_indices)} queries disagree")
    fig = new_figure((1.3 * (k + 1), 2.6 * n))
    axes = fig.subplots(n, k + 1, squeeze=False)
    for r in range(n):
        ax = axes[r, 0]
        ax.imshow(_image(query_images, int(query_indices[r])), cmap="gray")
        ax.set_title(titles[r] if titles else f"query {query_indices[r]}", fontsize=7)
        for c in range(k):
            ax = axes[r, c + 1]
            img = _image(gallery_images, int(ranked[r, c]))
            ax.imshow(img, cmap="gray")
            h, w = img.shape[:2]
            colour = "limegreen" if correct[r, c] else "red"
            ax.add_patch(Rectangle((0, 0), w - 1, h - 1, fill=False, edgecolor=colour, linewidth=4))
            ax.set_title(f"{c + 1}", fontsize=7, color=colour)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return save_png(path, fig)
