"""Metric behaviour beyond the fixtures: chunking, ties, similarity helper, errors."""

from __future__ import annotations

import numpy as np
import pytest

from tests.evaluation._reference import reference_eval
from vireid.evaluation.metrics import (
    cosine_distance,
    distance_from_similarity,
    evaluate_features,
    evaluate_ranking,
    summarize_trials,
)


def _random_case(seed: int, nq: int = 50, ng: int = 80):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, 12, nq)
    g_pids = rng.integers(0, 12, ng)
    q_cams = rng.choice([3, 6], nq)
    g_cams = rng.choice([1, 2, 4, 5], ng)
    return rng.random((nq, ng)), q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sysu", [True, False])
def test_matches_reference_loop_for_any_chunk(seed: int, sysu: bool) -> None:
    dist, qp, gp, qc, gc = _random_case(seed)
    cmc, mAP, mINP, ap, inp, valid = reference_eval(dist, qp, gp, qc, gc, sysu=sysu)  # noqa: N806
    for chunk in (1, 7, 1000):
        r = evaluate_ranking(dist, qp, gp, qc, gc, sysu_removal=sysu, chunk=chunk)
        np.testing.assert_allclose(r.cmc, cmc, atol=1e-7)
        assert r.mAP == pytest.approx(mAP, abs=1e-12) and r.mINP == pytest.approx(mINP, abs=1e-12)
        assert np.array_equal(r.valid, valid)


def test_worked_example_unique_identity_cmc() -> None:
    # ranked gallery ids: 7, 5, 7, 5, 9(match), 5, 9(match) -> AP = (1/5 + 2/7)/2, INP = 2/7;
    # distinct-id list 7, 5, 9 puts the match at rank 3; the standard CMC at rank 5
    g = np.array([7, 5, 7, 5, 9, 5, 9])
    dist = np.arange(7, dtype=float)[None, :]
    r = evaluate_ranking(dist, [9], g, [6], [1] * 7, sysu_removal=True)
    assert r.ap[0] == pytest.approx((1 / 5 + 2 / 7) / 2) and r.inp[0] == pytest.approx(2 / 7)
    assert r.cmc.tolist() == [0, 0, 1]  # three distinct identities
    assert r.rank(1) == 0 and r.rank(3) == 1 and r.rank(20) == 1
    std = evaluate_ranking(dist, [9], g, sysu_removal=False)
    assert std.cmc.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert evaluate_ranking(dist, [9], g, [6], [1] * 7, sysu_removal=True, unique_ids_cmc=False).cmc.tolist() \
        == std.cmc.tolist()


def test_removal_rule_only_for_camera_3_and_any_identity() -> None:
    g = np.array([1, 2, 1])
    cams = np.array([2, 2, 1])
    dist = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    r = evaluate_ranking(dist, [1, 1], g, [3, 6], cams, sysu_removal=True)
    # camera 3: both cam-2 entries dropped -> the cam-1 match is first; camera 6 keeps all
    assert r.ap.tolist() == [1.0, pytest.approx((1 + 2 / 3) / 2)]
    assert r.first_rank.tolist() == [0, 0]


def test_stable_ties_rank_lower_gallery_index_first() -> None:
    dist = np.zeros((1, 30))
    g = np.arange(30)
    for target in (0, 29):
        r = evaluate_ranking(dist, [target], g, sysu_removal=False, stable=True)
        assert r.first_rank[0] == target


def test_ragged_lists_are_extended_flat() -> None:
    # camera-3 query sees ids {1, 3}; camera-6 query sees {1, 2, 3}
    g = np.array([1, 2, 3])
    cams = np.array([1, 2, 4])
    dist = np.array([[0.0, 0.1, 0.2], [0.2, 0.1, 0.0]])
    r = evaluate_ranking(dist, [3, 1], g, [3, 6], cams, sysu_removal=True)
    assert r.min_list_length == 2 and len(r.cmc) == 3
    assert r.cmc.tolist() == [0.0, 0.5, 1.0]


def test_similarity_helper_and_features_path() -> None:
    rng = np.random.default_rng(3)
    q = rng.standard_normal((20, 6)).astype(np.float32)
    g = rng.standard_normal((30, 6)).astype(np.float32)
    qp, gp = rng.integers(0, 5, 20), rng.integers(0, 5, 30)
    sim = q.astype(np.float64) @ g.astype(np.float64).T
    a = evaluate_ranking(distance_from_similarity(sim), qp, gp, sysu_removal=False)
    b = evaluate_features(q, g, qp, gp, sysu_removal=False, chunk=4)
    c = evaluate_features(q, g, qp, gp, sysu_removal=False, distance=lambda x, y: cosine_distance(x, y))
    assert a.mAP == b.mAP == c.mAP and np.array_equal(a.cmc, b.cmc)


def test_errors() -> None:
    with pytest.raises(ValueError, match="every query is invalid"):
        evaluate_ranking(np.zeros((1, 2)), [5], [1, 2], sysu_removal=False)
    with pytest.raises(ValueError, match="q_camids"):
        evaluate_ranking(np.zeros((1, 2)), [1], [1, 2], sysu_removal=True)
    with pytest.raises(ValueError, match="g_pids must have shape"):
        evaluate_ranking(np.zeros((1, 2)), [1], [1, 2, 3], sysu_removal=False)
    with pytest.raises(ValueError, match="chunk"):
        evaluate_ranking(np.zeros((1, 2)), [1], [1, 2], sysu_removal=False, chunk=0)


def test_summarize_trials_mean_and_population_std() -> None:
    mean, std = summarize_trials([{"mAP": 0.2, "rank1": 0.5}, {"mAP": 0.4, "rank1": 0.5}])
    assert mean == {"mAP": pytest.approx(0.3), "rank1": 0.5}
    assert std == {"mAP": pytest.approx(0.1), "rank1": 0.0}
    with pytest.raises(ValueError):
        summarize_trials([])
