"""RegDB: trial check, both directions, aggregation over separately trained models."""

from __future__ import annotations

import numpy as np
import pytest

from vireid.evaluation.metrics import evaluate_ranking
from vireid.evaluation.regdb import (
    TrialMismatchError,
    aggregate_regdb,
    check_regdb_trial,
    regdb_protocol,
)


def _feats(seed: int, n_ids: int = 6, per: int = 3):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, 8))
    labels = np.repeat(np.arange(n_ids), per)
    vis = centres[labels] + 0.5 * rng.standard_normal((len(labels), 8))
    th = centres[labels] + 0.5 * rng.standard_normal((len(labels), 8))
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return norm(vis), labels, norm(th), labels


def test_check_refuses_another_trial_and_names_both() -> None:
    check_regdb_trial(3, 3)
    with pytest.raises(TrialMismatchError, match=r"trained on RegDB trial 2 cannot be tested on trial 5"):
        check_regdb_trial(2, 5)
    with pytest.raises(TrialMismatchError, match="no regdb_trial"):
        check_regdb_trial(None, 1)
    check_regdb_trial(None, 1, allow_unknown=True)
    with pytest.raises(ValueError, match="1..10"):
        check_regdb_trial(11, 11)


def test_protocol_refuses_mismatched_model_before_computing() -> None:
    vis, vl, th, tl = _feats(0)
    with pytest.raises(TrialMismatchError, match="trial 4 .* trial 7"):
        regdb_protocol(vis, vl, th, tl, trial=7, model_trial=4)


def test_protocol_directions_swap_query_and_gallery() -> None:
    vis, vl, th, tl = _feats(1)
    out = regdb_protocol(vis, vl, th, tl, trial=2, model_trial=2)
    v2t = evaluate_ranking(-(vis.astype(np.float64) @ th.T.astype(np.float64)), vl, tl, sysu_removal=False)
    t2v = evaluate_ranking(-(th.astype(np.float64) @ vis.T.astype(np.float64)), tl, vl, sysu_removal=False)
    assert out["v2t"].mAP == v2t.mAP and out["t2v"].mAP == t2v.mAP
    assert out["v2t"].mAP != out["t2v"].mAP
    only = regdb_protocol(vis, vl, th, tl, trial=2, model_trial=2, directions=["t2v"])
    assert list(only) == ["t2v"]


def test_aggregate_over_trials() -> None:
    per_trial = {}
    for t in (1, 2, 3):
        vis, vl, th, tl = _feats(t)
        per_trial[t] = regdb_protocol(vis, vl, th, tl, trial=t, model_trial=t)
    agg = aggregate_regdb(per_trial)
    assert set(agg) == {"v2t", "t2v"}
    maps = [per_trial[t]["v2t"].mAP for t in (1, 2, 3)]
    assert agg["v2t"]["trials"] == [1, 2, 3]
    assert agg["v2t"]["mean"]["mAP"] == pytest.approx(np.mean(maps))
    assert agg["v2t"]["std"]["mAP"] == pytest.approx(np.std(maps))
    assert agg["v2t"]["std"]["mAP"] > 0
    with pytest.raises(ValueError, match="no t2v"):
        aggregate_regdb({1: per_trial[1], 2: {"v2t": per_trial[2]["v2t"]}})
    with pytest.raises(ValueError, match="1..10"):
        aggregate_regdb({0: per_trial[1]})
