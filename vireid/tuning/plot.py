"""The search's picture: validation mAP per trial over epochs and the (S, T) plane, as PNG bytes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def plot(summary: Mapping[str, Any], trials: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG: val_mAP per epoch of every trial (early-stopped dashed, best thick) and the
    trials' S/T scatter coloured by final val_mAP."""
    import matplotlib.ticker

    from vireid.plotting import new_figure, png_bytes

    rows = {r["trial_id"]: r for r in summary["trials"]}
    best_id = summary["best"]["trial_id"] if summary["best"] else None
    fig = new_figure((11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    for t in trials:
        r = rows[t["trial_id"]]
        pts = [(h["epoch"], h["val_mAP"]) for h in t["history"] if h["val_mAP"] is not None]
        if not pts:
            continue
        x, y = zip(*pts, strict=True)
        label = f"S={r['memory_size']} T={r['temperature']:.2f}"
        ax1.plot(x, y, "--" if r["early_stopped"] else "-", marker="o",
                 lw=3 if t["trial_id"] == best_id else 1.3, label=label)
    for rung in summary["scheduler"]["rungs"]:
        ax1.axvline(rung, color="grey", lw=0.6, ls=":")
    ax1.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation mAP")
    ax1.set_title("val_mAP per trial (dashed: stopped by ASHA; dotted: rungs)", fontsize=9)
    ax1.legend(fontsize=7)
    xs = [r["memory_size"] for r in summary["trials"]]
    ys = [r["temperature"] for r in summary["trials"]]
    cs = [r["final_val_mAP"] if r["final_val_mAP"] is not None else float("nan") for r in summary["trials"]]
    sc = ax2.scatter(xs, ys, c=cs, cmap="viridis", s=[40 + 30 * r["epochs_run"] for r in summary["trials"]],
                     edgecolors=["red" if r["trial_id"] == best_id else "black" for r in summary["trials"]],
                     linewidths=[2.5 if r["trial_id"] == best_id else 0.8 for r in summary["trials"]])
    fig.colorbar(sc, ax=ax2, label="final val_mAP")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    lo, hi = summary["search"]["temperature_range"]
    ax2.set_yticks([lo * (hi / lo) ** (i / 4) for i in range(5)] if hi > lo else [lo])
    ax2.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_xticks(summary["search"]["memory_sizes"], [str(s) for s in summary["search"]["memory_sizes"]])
    ax2.set_xlabel("memory size S")
    ax2.set_ylabel("temperature T")
    ax2.set_title("trials (size: epochs run; red edge: best)", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig, dpi=110)
