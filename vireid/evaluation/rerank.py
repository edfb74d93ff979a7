"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorised numpy.

Same computation as the authors' widely used ``re_ranking(q_g_dist, q_q_dist, g_g_dist,
k1=20, k2=6, lambda_value=0.3)``: distances are squared and each row normalised by its
maximum; k-reciprocal sets of size k1 are expanded with the k1/2-reciprocal sets of their
members when those overlap by more than 2/3; Gaussian-weighted encodings are averaged
over the k2 nearest neighbours (local query expansion); the Jaccard distance between
encodings is mixed with the original distance, ``(1 - lambda) * jaccard + lambda * original``.
Memory is O((Q + G)^2); the Jaccard step runs over ``chunk`` queries at a time.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse


def euclidean_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances ``[len(a), len(b)]`` (float32, non-negative)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def _reciprocal(initial_rank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Forward top-(k+1) lists ``[N, k+1]`` and the mask of their k-reciprocal members."""
    n = initial_rank.shape[0]
    fwd = initial_rank[:, : k + 1]
    member = np.zeros((n, n), dtype=bool)
    member[np.arange(n)[:, None], fwd] = True
    # j is a k-reciprocal neighbour of i when each is in the other's forward list
    return fwd, member[fwd, np.arange(n)[:, None]]


def re_ranking(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk: int = 256,
) -> np.ndarray:
    """Re-ranked ``[Q, G]`` float32 distances from non-negative (e.g. Euclidean) distances."""
    q_g = np.asarray(q_g_dist, dtype=np.float32)
    q_q = np.asarray(q_q_dist, dtype=np.float32)
    g_g = np.asarray(g_g_dist, dtype=np.float32)
    nq, ng = q_g.shape
    if q_q.shape != (nq, nq) or g_g.shape != (ng, ng):
        raise ValueError(f"shapes do not fit: q_g {q_g.shape}, q_q {q_q.shape}, g_g {g_g.shape}")
    if min(q_g.min(initial=0), q_q.min(initial=0), g_g.min(initial=0)) < 0:
        raise ValueError("re-ranking needs non-negative distances (e.g. Euclidean), not -cosine")
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need k1 >= 1, k2 >= 1, 0 <= lambda <= 1; got {k1}, {k2}, {lambda_value}")
    n = nq + ng
    orig = np.block([[q_q, q_g], [q_g.T, g_g]]) ** 2
    col_max = orig.max(axis=0)
    orig = np.ascontiguousarray((orig / np.where(col_max > 0, col_max, 1)).T)
    initial_rank = np.argsort(orig, axis=1).astype(np.int32)
    k1 = min(k1, n - 1)
    rows = np.arange(n)

    fwd, is_recip = _reciprocal(initial_rank, k1)
    recip = np.zeros((n, n), dtype=bool)
    recip[np.broadcast_to(rows[:, None], fwd.shape)[is_recip], fwd[is_recip]] = True
    half = int(np.around(k1 / 2.0))
    hfwd, h_is_recip = _reciprocal(initial_rank, half)
    # candidates c of R(i) add their half-size reciprocal set H(c) when |H(c) & R(i)| > 2/3 |H(c)|
    cand_sets = hfwd[fwd]  # [N, k1+1, half+1]: forward lists of the candidates
    cand_mask = h_is_recip[fwd]  # membership of H(c)
    overlap = (recip[rows[:, None, None], cand_sets] & cand_mask).sum(axis=2)
    grow = is_recip & (overlap > 2.0 / 3.0 * cand_mask.sum(axis=2))
    add = grow[:, :, None] & cand_mask
    expanded = recip.copy()
    expanded[np.broadcast_to(rows[:, None, None], add.shape)[add], cand_sets[add]] = True

    weight = np.where(expanded, np.exp(-orig), np.float32(0)).astype(np.float32)
    V = weight / weight.sum(axis=1, keepdims=True)
    if k2 != 1:
        nbrs = initial_rank[:, :k2]
        V_qe = np.empty_like(V)
        for s in range(0, n, chunk):
            V_qe[s : s + chunk] = V[nbrs[s : s + chunk]].mean(axis=1)
        V = V_qe

    # Jaccard over sparse encodings: sum_j min(V[i, j], V[g, j]) for query rows i
    cols = scipy.sparse.csc_matrix(V)
    col_nnz = np.diff(cols.indptr)
    jaccard = np.empty((nq, n), dtype=np.float32)
    for s in range(0, nq, chunk):
        part = scipy.sparse.coo_matrix(V[s : min(s + chunk, nq)])
        reps = col_nnz[part.col]
        starts = np.repeat(cols.indptr[part.col] - np.cumsum(reps) + reps, reps)
        flat = starts + np.arange(reps.sum())
        other = cols.indices[flat]
        mins = np.minimum(np.repeat(part.data, reps), cols.data[flat])
        c = part.shape[0]
        temp_min = np.bincount(np.repeat(part.row, reps) * n + other, weights=mins,
                               minlength=c * n).reshape(c, n).astype(np.float32)
        jaccard[s : s + c] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + orig[:nq] * lambda_value
    return final[:, nq:]


def rerank_features(
    q_feat: np.ndarray,
    g_feat: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked ``[Q, G]`` distances from features, via Euclidean distances."""
    return re_ranking(euclidean_distance(q_feat, g_feat), euclidean_distance(q_feat, q_feat),
                      euclidean_distance(g_feat, g_feat), k1=k1, k2=k2, lambda_value=lambda_value)
