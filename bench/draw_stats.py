"""How hard is a synthetic SYSU-MM01 draw? Figures per generator seed, no image rendered.

Issue #22 asks why draws differ (draw 0: test mAP 14.94 = 3.4x chance; a draw never used in
development: 7.37 = 1.7x). This reads the generator's own records of each draw
(:func:`vireid.data.synthetic.make_identity`, :func:`sysu_split_ids`, :func:`sysu_cameras_of`)
and reports, for the test identities (the ones the test protocols score) and the training
identities:

- ``ir_cams``: infrared cameras per identity (1 or 2; SYSU's cameras 3 and 6), and the
  fraction with one only (``one_ir``), which then has a single viewpoint and background;
- ``pattern_lost_ir``: of the identities with a patterned upper garment, the fraction whose
  pattern has no contrast in NIR (``|nir(upper) - nir(pattern)| < 0.05``): the pattern, a cue
  visible images show, is gone from every infrared image;
- ``ir_twins``: the fraction of identities with another identity of the same split that an
  infrared camera cannot tell apart by its garments: same silhouette attributes (lower
  garment kind, sleeves, hair, backpack, hat, shoulder bag, and pattern kind where the pattern
  shows in NIR) and NIR reflectance of the upper and lower garment each within 0.08;
- ``vis_twins``: the same test with the garments' visible colours (RGB distance < 0.15 each),
  the visible camera's view of the same question;
- ``ir_garment_twins`` / ``vis_garment_twins``: the garment test alone, silhouette ignored
  (added after the first two came out 0-2 % on every draw: a looser view of the same question).

    uv run --frozen python bench/draw_stats.py --seeds 0 1 2 3 4 5 --json bench/results/draw_stats.json

The generator is ``data.synth`` of ``--params`` with each seed. The thresholds are fixed here, chosen before looking at any draw's result; they are a
description of the draws, not a change of the generator.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vireid.config import SyntheticConfig
from vireid.data.synthetic import (
    _SYSU,
    Identity,
    make_identity,
    sysu_cameras_of,
    sysu_split_ids,
)
from vireid.data.sysu import INFRARED_CAMERAS

UPPER, LOWER, PATTERN = 2, 3, 8  # indices into Identity.materials
PATTERN_LOST = 0.05  # NIR contrast below which a pattern does not show
NIR_CLOSE = 0.08  # NIR reflectance difference below which two garments look alike
RGB_CLOSE = 0.15  # visible colour distance below which two garments look alike


def pattern_shows_in_nir(ident: Identity) -> bool:
    """A patterned upper garment whose pattern has contrast in NIR."""
    m = ident.materials
    return ident.pattern != 0 and abs(m[UPPER].nir - m[PATTERN].nir) >= PATTERN_LOST


def _silhouette(ident: Identity, pattern: int) -> tuple[int, ...]:
    return (ident.lower_kind, int(ident.long_sleeves), ident.hair, int(ident.backpack), int(ident.hat),
            ident.shoulder_bag, pattern)


def garments_alike_in_nir(a: Identity, b: Identity) -> bool:
    """Upper and lower garments of ``a`` and ``b`` each within :data:`NIR_CLOSE` in NIR."""
    return all(abs(a.materials[i].nir - b.materials[i].nir) < NIR_CLOSE for i in (UPPER, LOWER))


def garments_alike_in_visible(a: Identity, b: Identity) -> bool:
    """Upper and lower garments of ``a`` and ``b`` each within :data:`RGB_CLOSE` in colour."""
    return all(float(np.linalg.norm(a.materials[i].rgb - b.materials[i].rgb)) < RGB_CLOSE for i in (UPPER, LOWER))


def ir_alike(a: Identity, b: Identity) -> bool:
    """Whether an infrared camera sees ``a`` and ``b`` in garments it cannot tell apart."""
    pa = a.pattern if pattern_shows_in_nir(a) else 0
    pb = b.pattern if pattern_shows_in_nir(b) else 0
    return _silhouette(a, pa) == _silhouette(b, pb) and garments_alike_in_nir(a, b)


def visible_alike(a: Identity, b: Identity) -> bool:
    """The same question for a visible camera (colours, pattern kind always visible)."""
    return _silhouette(a, a.pattern) == _silhouette(b, b.pattern) and garments_alike_in_visible(a, b)


def split_stats(idents: dict[int, Identity], cams: dict[int, list[int]], ids: Sequence[int]) -> dict[str, float]:
    """The figures of the module docstring for the identities ``ids``."""
    ir = np.asarray([sum(c in INFRARED_CAMERAS for c in cams[i]) for i in ids], float)
    vis = np.asarray([sum(c not in INFRARED_CAMERAS for c in cams[i]) for i in ids], float)
    patterned = [i for i in ids if idents[i].pattern != 0]
    ir_twin, vis_twin, ir_garment, vis_garment = set(), set(), set(), set()
    for a, b in itertools.combinations(ids, 2):
        ia, ib = idents[a], idents[b]
        for found, alike in ((ir_twin, ir_alike(ia, ib)), (vis_twin, visible_alike(ia, ib)),
                             (ir_garment, garments_alike_in_nir(ia, ib)),
                             (vis_garment, garments_alike_in_visible(ia, ib))):
            if alike:
                found.update((a, b))
    return {
        "identities": len(ids),
        "ir_cams": float(ir.mean()),
        "one_ir": float((ir == 1).mean()),
        "vis_cams": float(vis.mean()),
        "pattern_lost_ir": sum(not pattern_shows_in_nir(idents[i]) for i in patterned) / max(1, len(patterned)),
        "ir_twins": len(ir_twin) / len(ids),
        "vis_twins": len(vis_twin) / len(ids),
        "ir_garment_twins": len(ir_garment) / len(ids),
        "vis_garment_twins": len(vis_garment) / len(ids),
    }


def draw_stats(cfg: SyntheticConfig) -> dict[str, dict[str, float]]:
    """``{"test": {...}, "train": {...}}`` for the draw of ``cfg`` (its ``seed``)."""
    splits = sysu_split_ids(cfg)
    ids = range(1, cfg.sysu_identities + 1)
    idents = {i: make_identity(cfg.seed, _SYSU, i) for i in ids}
    cams = {i: sysu_cameras_of(cfg, i) for i in ids}
    return {name: split_stats(idents, cams, splits[name]) for name in ("test", "train")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="generator seeds")
    parser.add_argument("--params", default="params.yaml", help="its data.synth is the generator (but the seed)")
    parser.add_argument("--json", default="", help="write the figures here too")
    args = parser.parse_args(argv)
    from vireid.stages.entry import load_config

    base = load_config(args.params).data.synth
    out: dict[str, dict] = {}
    cols = ("ir_cams", "one_ir", "vis_cams", "pattern_lost_ir", "ir_twins", "vis_twins", "ir_garment_twins",
            "vis_garment_twins")
    print("| seed | split | ids | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for seed in args.seeds:
        stats = draw_stats(dataclasses.replace(base, seed=seed))
        out[str(seed)] = stats
        for split, s in stats.items():
            print(f"| {seed} | {split} | {s['identities']} | " + " | ".join(f"{s[c]:.3f}" for c in cols) + " |")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"thresholds": {"pattern_lost": PATTERN_LOST, "nir_close": NIR_CLOSE,
                                                  "rgb_close": RGB_CLOSE}, "draws": out}, indent=2) + "\n")
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
