"""bench/ablation.py --pool: the registered comparison's pairs pooled over draws (issue #22),
on result files whose answer is known."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests._bench import load_bench

ab = load_bench("ablation")


def _run(seed: int, m_ap: float, val: float) -> dict:
    metrics = {"rank1": m_ap / 2, "mAP": m_ap, "mINP": m_ap / 3}
    return {"seed": seed, "selected_epoch": 2, "selected": metrics, "last": {**metrics, "mAP": m_ap + 1},
            "curve": [{"epoch": 1}, {"epoch": 2, "val_mAP": val}, {"epoch": 3, "val_mAP": 0.9}]}


def _file(sha: str, base: dict[int, float], ours: dict[int, float]) -> dict:
    return {"shards_sha256": sha, "results": {
        "baseline": [_run(s, v, 0.2) for s, v in base.items()],
        "x": [_run(s, v, 0.3) for s, v in ours.items()]}}


def test_pairs_across_draws_are_matched_by_shards_and_seed_and_counted_once() -> None:
    d1 = _file("aa", {0: 10.0, 1: 12.0, 2: 11.0}, {0: 11.0, 1: 14.0})  # seed 2 has no partner
    d2 = _file("bb", {0: 20.0}, {0: 23.0})  # seed 0 again, another draw: a pair of its own
    again = _file("aa", {1: 99.0}, {1: 0.0})  # the same draw's seed 1 in a second file: not recounted
    pairs = ab.pooled_pairs({"1": d1, "2": d2, "1b": again}, "x")
    assert [(p["draw"], p["seed"]) for p in pairs] == [("1", 0), ("1", 1), ("2", 0)]
    assert [o - b for b, o in (p["selected_mAP"] for p in pairs)] == [1.0, 2.0, 3.0]
    # the selected epoch's validation mAP, not the best or the last of the curve
    assert pairs[0]["val_mAP"] == (0.2, 0.3)
    report = ab.pooled_report(pairs, "x")
    # mean 2, sd 1, t(0.975, 2 df) = 4.303: half-width 4.303 / sqrt(3) = 2.48
    assert "Δ test mAP, selected epoch: +2.00 [-0.48, +4.48] over 3 pairs" in report
    assert "Δ held-out cross-modality val_mAP, selected epoch: +0.100" in report


def test_paired_ci_of_a_single_pair_has_no_interval() -> None:
    mean, lo, hi = ab.paired_ci(__import__("numpy").array([1.5]))
    assert mean == pytest.approx(1.5) and lo != lo and hi != hi  # NaN


def test_pool_without_a_label_names_the_argument() -> None:
    proc = subprocess.run([sys.executable, str(ab.__file__), "--pool", "draw1.json"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "--pool takes LABEL=JSON" in proc.stderr and "draw1.json" in proc.stderr
