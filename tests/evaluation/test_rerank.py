"""k-reciprocal re-ranking: agreement with a per-sample loop of the original algorithm,
and basic properties."""

from __future__ import annotations

import numpy as np
import pytest

from vireid.evaluation.metrics import evaluate_ranking
from vireid.evaluation.rerank import euclidean_distance, re_ranking, rerank_features


def _loop_re_ranking(q_g, q_q, g_g, k1=20, k2=6, lam=0.3):
    """Per-sample loops in the structure of Zhong et al.'s published numpy code."""
    orig = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    orig = np.power(orig, 2).astype(np.float32)
    orig = np.transpose(orig / np.max(orig, axis=0))
    V = np.zeros_like(orig)  # noqa: N806
    rank = np.argsort(orig).astype(np.int32)
    nq, n = q_g.shape[0], orig.shape[0]
    for i in range(n):
        fwd = rank[i, : k1 + 1]
        rec = fwd[np.where(rank[fwd, : k1 + 1] == i)[0]]
        exp = rec
        for c in rec:
            cf = rank[c, : int(np.around(k1 / 2)) + 1]
            cr = cf[np.where(rank[cf, : int(np.around(k1 / 2)) + 1] == c)[0]]
            if len(np.intersect1d(cr, rec)) > 2 / 3 * len(cr):
                exp = np.append(exp, cr)
        exp = np.unique(exp)
        w = np.exp(-orig[i, exp])
        V[i, exp] = w / np.sum(w)
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(0) for i in range(n)])  # noqa: N806
    jac = np.zeros((nq, n), dtype=np.float32)
    for i in range(nq):
        tmp = np.zeros(n, dtype=np.float32)
        for j in np.where(V[i] != 0)[0]:
            rows = np.where(V[:, j] != 0)[0]
            tmp[rows] += np.minimum(V[i, j], V[rows, j])
        jac[i] = 1 - tmp / (2 - tmp)
    return (jac * (1 - lam) + orig[:nq] * lam)[:, nq:]


def _clusters(seed: int, n_ids: int = 8, per: int = 5, noise: float = 0.6):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, 16))
    labels = np.repeat(np.arange(n_ids), per)
    x = centres[labels] + noise * rng.standard_normal((len(labels), 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.mark.parametrize(("k1", "k2"), [(20, 6), (5, 3), (4, 1)])
def test_matches_loop_implementation(k1: int, k2: int) -> None:
    feat, labels = _clusters(0)
    q, g = feat[::5], np.delete(feat, np.arange(0, len(feat), 5), axis=0)
    args = (euclidean_distance(q, g), euclidean_distance(q, q), euclidean_distance(g, g))
    got = re_ranking(*args, k1=k1, k2=k2, lambda_value=0.3, chunk=3)
    want = _loop_re_ranking(*args, k1=k1, k2=k2, lam=0.3)
    assert got.shape == (len(q), len(g))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_properties_shape_symmetry_and_improvement() -> None:
    feat, labels = _clusters(1, n_ids=10, per=6, noise=0.9)
    q_idx = np.arange(0, len(feat), 6)
    g_idx = np.setdiff1d(np.arange(len(feat)), q_idx)
    q, g = feat[q_idx], feat[g_idx]
    d = rerank_features(q, g)
    assert d.shape == (len(q), len(g)) and d.dtype == np.float32 and np.isfinite(d).all()
    # gallery = query set: the re-ranked matrix of a set against itself is symmetric in the
    # Jaccard part's inputs, and each sample is its own nearest neighbour
    self_d = rerank_features(feat, feat, k1=6, k2=3)
    assert (np.argmin(self_d, axis=1) == np.arange(len(feat))).all()
    # on clustered data re-ranking does not hurt and here improves mAP
    before = evaluate_ranking(euclidean_distance(q, g), labels[q_idx], labels[g_idx], sysu_removal=False)
    after = evaluate_ranking(d, labels[q_idx], labels[g_idx], sysu_removal=False)
    assert after.mAP > before.mAP


def test_true_match_moves_up_on_constructed_case() -> None:
    # query q and its true match t are mutual nearest neighbours of a tight group; a
    # distractor x is slightly closer to q but belongs to another tight group
    rng = np.random.default_rng(2)
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.0, 1.0, 0.0])
    group_a = a + 0.05 * rng.standard_normal((6, 3))
    group_b = b + 0.05 * rng.standard_normal((6, 3))
    q = np.array([[0.62, 0.38, 0.0]])
    t = np.array([[0.6, 0.4, 0.0]]) * 0.98 + a * 0.02
    x = np.array([[0.5, 0.5, 0.0]]) * 0.9 + b * 0.1
    gal = np.vstack([x, t, group_a, group_b])
    orig = euclidean_distance(q, gal)
    rr = re_ranking(orig, euclidean_distance(q, q), euclidean_distance(gal, gal), k1=6, k2=3)
    assert np.argsort(rr[0]).tolist().index(1) <= np.argsort(orig[0]).tolist().index(1)


def test_rejects_negative_distances() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        re_ranking(-np.ones((2, 3)), np.zeros((2, 2)), np.zeros((3, 3)))
