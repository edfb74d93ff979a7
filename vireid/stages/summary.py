"""Print where the results of ``make run`` are and how to look at them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vireid.stages.entry import load_config, stage_parser
from vireid.tracking import resolve_target


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _chance_line(metrics: dict[str, Any], key: str) -> list[str]:
    """``chance: ...`` under protocol ``key`` when metrics.json holds its chance level."""
    chance = {m: metrics.get(f"chance/{key}/{m}") for m in ("rank1", "mAP", "mINP")}
    if any(v is None for v in chance.values()):
        return []
    mean = metrics[key]["mean"]
    ratio = "  ".join(f"{name} {mean[m] / chance[m]:.1f}x" for m, name in
                      (("rank1", "Rank-1"), ("mAP", "mAP")) if chance[m])
    return [f"           {'':{len(key)}}  chance (random embeddings): Rank-1 {chance['rank1']:.2f}  "
            f"mAP {chance['mAP']:.2f}  mINP {chance['mINP']:.2f}  -> {ratio} chance"]


def main(argv: list[str] | None = None) -> str:
    parser = stage_parser(__doc__)
    parser.add_argument("--outputs", default="outputs", help="the pipeline's output directory")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    out = Path(args.outputs)
    lines = ["", "== vireid: results =="]
    train = _read(out / "train" / "train_summary.json")
    if train:
        val = ", ".join(f"{k}={100 * v:.1f}%" for k, v in train.get("val_metrics", {}).items()
                        if k in ("val_mAP", "val_rank1"))
        lines.append(f"training:  {train['epochs']} epochs, {train.get('wall_seconds', 0):.0f} s, "
                     f"{train.get('images_per_s') or 0:.1f} images/s; selected epoch "
                     f"{train['selected_epoch']} ({val or 'no validation: last epoch'})")
        lines.append(f"           {out / 'train' / 'model.pt'}, {out / 'train' / 'train_summary.json'}, "
                     f"{out / 'train' / 'history.csv'}")
    metrics = _read(out / "eval" / "metrics.json")
    if metrics:
        head = metrics.get(cfg.eval.headline)
        lines.append(f"test:      {cfg.eval.headline} = "
                     f"{'n/a' if head is None else f'{head:.2f}'} ({metrics.get('units', '')})")
        for key in sorted(k for k, v in metrics.items() if isinstance(v, dict) and "mean" in v):
            mean = metrics[key]["mean"]
            lines.append(f"           {key}: Rank-1 {mean['rank1']:.2f}  mAP {mean['mAP']:.2f}  "
                         f"mINP {mean['mINP']:.2f}")
            lines.extend(_chance_line(metrics, key))
    lines.append(f"metrics:   {out / 'eval' / 'metrics.json'}   (uv run dvc metrics show)")
    lines.append(f"plots:     {out / 'eval' / 'cmc.png'}, {out / 'eval' / 'ranked_list.png'}, "
                 f"{out / 'eval' / 'cmc.csv'}   (uv run dvc plots show)")
    registration = _read(out / "register" / "registration.json")
    if registration:
        alias = registration.get("alias") or f"no alias (champion: v{registration.get('current_champion')})"
        lines.append(f"registry:  {registration.get('model_name')} v{registration.get('version')} -> "
                     f"{alias}: {registration.get('reason')}")
    target = resolve_target(cfg.track, Path.cwd())
    lines.append(f"MLflow UI: uv run mlflow ui --backend-store-uri {target.tracking_uri}   "
                 "(then open http://127.0.0.1:5000)")
    text = "\n".join(lines)
    print(text)
    return text

