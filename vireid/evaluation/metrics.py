"""Ranking metrics of the VI-ReID protocols, vectorised and chunked over queries.

Matches the AGW reference (``eval_sysu`` and ``eval_regdb`` of the Cross-Modal-Re-ID
baseline) value for value:

- Ranking: ``numpy.argsort(distmat, axis=1)`` with numpy's default kind (``"quicksort"``,
  an introsort / SIMD sort that is *not* stable). **Tie rule**: with ``stable=False``,
  gallery entries at exactly equal distance are ordered the way numpy's default argsort
  orders them, which is what the reference does, and depends on the numpy build and the
  CPU's SIMD path (the same build and CPU give the same order); with ``stable=True``
  (``kind="stable"``) ties are broken by gallery index, the lower index ranking first.
  Ties do not occur in practice with float features; they matter for the edge cases only.
- SYSU removal rule (``sysu_removal=True``): for a query from camera 3, every gallery entry
  from camera 2 is dropped from that query's ranked list, whatever its identity.
- A query is *valid* when its identity is in its (post-removal) ranked list. Invalid
  queries are excluded from mAP and mINP and from the CMC denominator.
- AP on the full ranked list; INP = (number of true matches) / (rank of the last one).
- CMC: with ``unique_ids_cmc`` (the SYSU default) the CMC is computed on the ranked list of
  *distinct identities* (repeated identities removed, first occurrence kept), as
  ``eval_sysu`` does; otherwise it is the standard CMC (first true match in the full list),
  as ``eval_regdb`` does. Its length is ``min(max_rank, number of gallery entries)`` and, for
  the unique-identity CMC, at most the number of distinct identities a query sees (the
  reference returns that many entries). Where queries see different numbers of distinct
  identities (the reference fails on these inputs: it cannot stack rows of different
  lengths), the curve has the largest length and a query whose list has ended keeps its
  final value; ``min_list_length`` is the length the reference's curve would have had.
  The reference also fails when the removal rule makes some ranked lists shorter than
  ``max_rank`` (a gallery under 20 images), in an array it computes but does not return;
  there we return what it would have returned. Values are float32 fractions, as the
  reference returns them; ``cmc_full`` is the curve over the whole gallery.

Memory is bounded by ``chunk`` rows of the distance matrix at a time: about
``35-45 * chunk * n_gallery`` bytes of work space (measured: bench/bench_eval.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Ranks reported as headline numbers.
HEADLINE_RANKS: tuple[int, ...] = (1, 5, 10, 20)
#: Names of the summary metrics, in report order.
METRIC_NAMES: tuple[str, ...] = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")

#: SYSU-MM01: queries from this camera ...
SYSU_QUERY_CAMERA_REMOVING = 3
#: ... do not see gallery entries from this camera (same room).
SYSU_REMOVED_GALLERY_CAMERA = 2


@dataclass(frozen=True)
class RankingResult:
    """Metrics of one query set against one gallery.

    ``ap``/``inp`` are NaN for invalid queries; ``first_rank`` is the 0-based position of
    the first true match in the list the CMC is computed on (-1 where invalid).
    """

    cmc: np.ndarray  # float32 [L], L = min(max_rank, ...), fractions
    cmc_full: np.ndarray  # float32, the same curve over the whole gallery
    mAP: float
    mINP: float
    ap: np.ndarray  # float64 [Q]
    inp: np.ndarray  # float64 [Q]
    valid: np.ndarray  # bool [Q]
    first_rank: np.ndarray  # int64 [Q]
    min_list_length: int  # fewest CMC-list entries any query sees (the reference's full-curve length)

    @property
    def num_valid(self) -> int:
        """Queries with at least one true match."""
        return int(self.valid.sum())

    def rank(self, k: int) -> float:
        """Rank-k as a fraction; past the curve's end the curve's last value (it is flat)."""
        if k < 1:
            raise ValueError(f"rank k must be >= 1, got {k}")
        return float(self.cmc_full[min(k, len(self.cmc_full)) - 1])

    def summary(self) -> dict[str, float]:
        """Rank-1/5/10/20, mAP and mINP as fractions (keys :data:`METRIC_NAMES`)."""
        out = {f"rank{k}": self.rank(k) for k in HEADLINE_RANKS}
        out["mAP"] = float(self.mAP)
        out["mINP"] = float(self.mINP)
        return out


def distance_from_similarity(similarity: np.ndarray) -> np.ndarray:
    """Turn a similarity matrix (larger = more alike) into a distance (smaller = more alike)."""
    return -np.asarray(similarity)


def cosine_distance(q_feat: np.ndarray, g_feat: np.ndarray) -> np.ndarray:
    """``-(q @ g.T)`` in float64: the reference convention for L2-normalised features."""
    return -(np.asarray(q_feat, dtype=np.float64) @ np.asarray(g_feat, dtype=np.float64).T)


def _as_1d(name: str, values: np.ndarray | Sequence[int] | None, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    return arr


class _Gallery:
    """Per-gallery constants shared by all query chunks."""

    def __init__(self, g_pids: np.ndarray, g_camids: np.ndarray | None, sysu_removal: bool):
        self.n = int(g_pids.shape[0])
        self.ids, self.code = np.unique(g_pids, return_inverse=True)
        self.code = self.code.astype(np.int32)
        self.removed = (
            np.asarray(g_camids) == SYSU_REMOVED_GALLERY_CAMERA
            if sysu_removal
            else np.zeros(self.n, dtype=bool)
        )
        self.any_removed = bool(self.removed.any())
        # identities still present for a query that removes entries
        self.n_ids_kept = len(np.unique(self.code[~self.removed]))

    def query_code(self, q_pids: np.ndarray) -> np.ndarray:
        """Index of each query identity in ``self.ids``; -1 when not in the gallery."""
        pos = np.searchsorted(self.ids, q_pids)
        pos = np.clip(pos, 0, max(len(self.ids) - 1, 0))
        found = len(self.ids) > 0
        hit = (self.ids[pos] == q_pids) if found else np.zeros(len(q_pids), dtype=bool)
        return np.where(hit, pos, -1).astype(np.int32)


@dataclass
class _ChunkOut:
    ap: np.ndarray
    inp: np.ndarray
    valid: np.ndarray
    first_rank: np.ndarray
    n_distinct: np.ndarray


def _eval_chunk(
    dist: np.ndarray,
    q_code: np.ndarray,
    q_removes: np.ndarray,
    gal: _Gallery,
    *,
    stable: bool,
    unique_ids_cmc: bool,
) -> _ChunkOut:
    """All per-query quantities of one chunk of distance rows."""
    c, g = dist.shape
    order = np.argsort(dist, axis=1, kind="stable" if stable else None)
    sorted_code = gal.code[order]
    match = sorted_code == q_code[:, None]
    removal_rows = q_removes & gal.any_removed
    if removal_rows.any():
        dropped = gal.removed[order] & removal_rows[:, None]
        match &= ~dropped
        # 1-based rank of each entry in the list the reference keeps
        kept_rank = np.cumsum(~dropped, axis=1, dtype=np.int32)
    else:
        dropped = None
        kept_rank = None

    rows, pos = np.nonzero(match)  # row-major: positions ascend within a row
    nrel = np.bincount(rows, minlength=c)
    valid = nrel > 0
    first_of_row = np.concatenate([[0], np.cumsum(nrel)[:-1]])
    hits_so_far = np.arange(1, len(rows) + 1) - np.repeat(first_of_row, nrel)
    rank = kept_rank[rows, pos] if kept_rank is not None else pos + 1
    precision = hits_so_far / rank.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.bincount(rows, weights=precision, minlength=c) / nrel
        last_rank = np.ones(c, dtype=np.float64)
        last_rank[valid] = rank[first_of_row[valid] + nrel[valid] - 1]
        inp = nrel / last_rank
    ap[~valid] = np.nan
    inp[~valid] = np.nan

    first_pos = np.zeros(c, dtype=np.int64)  # position of the first match in the sorted row
    first_pos[valid] = pos[first_of_row[valid]]
    if unique_ids_cmc:
        # distinct identities among the kept entries ranked before the first match
        before = np.arange(g)[None, :] < first_pos[:, None]
        if dropped is not None:
            before &= ~dropped
        r_idx, k_idx = np.nonzero(before)
        present = np.zeros((c, len(gal.ids)), dtype=bool)
        present[r_idx, sorted_code[r_idx, k_idx]] = True
        first_rank = present.sum(axis=1)
        n_distinct = np.where(removal_rows, gal.n_ids_kept, len(gal.ids))
    else:
        n_distinct = kept_rank[:, -1] if kept_rank is not None else np.full(c, g)
        first_rank = np.full(c, -1, dtype=np.int64)
        first_rank[valid] = rank[first_of_row[valid]] - 1
    first_rank = np.where(valid, first_rank, -1).astype(np.int64)
    return _ChunkOut(ap, inp, valid, first_rank, np.asarray(n_distinct, dtype=np.int64))


def _cmc(first_rank: np.ndarray, valid: np.ndarray, length: int) -> np.ndarray:
    """Fraction of valid queries whose first match is within the top k, k = 1..length."""
    hist = np.bincount(first_rank[valid], minlength=length)[:length]
    counts = np.cumsum(hist).astype(np.float32)
    return counts / np.float32(valid.sum())


def _evaluate_chunks(
    chunks: Iterator[tuple[slice, np.ndarray]],
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray | None,
    g_camids: np.ndarray | None,
    *,
    sysu_removal: bool,
    max_rank: int,
    stable: bool,
    unique_ids_cmc: bool | None,
) -> RankingResult:
    nq, ng = len(q_pids), len(g_pids)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if sysu_removal and (q_camids is None or g_camids is None):
        raise ValueError("sysu_removal needs q_camids and g_camids")
    unique = sysu_removal if unique_ids_cmc is None else unique_ids_cmc
    gal = _Gallery(g_pids, g_camids, sysu_removal)
    q_code = gal.query_code(q_pids)
    q_removes = (
        np.asarray(q_camids) == SYSU_QUERY_CAMERA_REMOVING
        if sysu_removal
        else np.zeros(nq, dtype=bool)
    )
    ap = np.empty(nq)
    inp = np.empty(nq)
    valid = np.empty(nq, dtype=bool)
    first_rank = np.empty(nq, dtype=np.int64)
    n_distinct = np.empty(nq, dtype=np.int64)
    for sl, dist in chunks:
        if dist.shape != (sl.stop - sl.start, ng):
            raise ValueError(f"distance chunk has shape {dist.shape}, expected ({sl.stop - sl.start}, {ng})")
        out = _eval_chunk(dist, q_code[sl], q_removes[sl], gal, stable=stable, unique_ids_cmc=unique)
        ap[sl], inp[sl], valid[sl] = out.ap, out.inp, out.valid
        first_rank[sl], n_distinct[sl] = out.first_rank, out.n_distinct
    if not valid.any():
        raise ValueError("no query identity appears in the gallery: every query is invalid")
    full_len = int(n_distinct.max()) if nq else 0
    return RankingResult(
        cmc=_cmc(first_rank, valid, min(max_rank, ng, full_len)),
        cmc_full=_cmc(first_rank, valid, full_len),
        mAP=float(np.mean(ap[valid])),
        mINP=float(np.mean(inp[valid])),
        ap=ap,
        inp=inp,
        valid=valid,
        first_rank=first_rank,
        min_list_length=int(n_distinct.min()) if nq else 0,
    )


def _row_slices(n: int, chunk: int) -> Iterator[slice]:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    for start in range(0, n, chunk):
        yield slice(start, min(n, start + chunk))


def evaluate_ranking(
    distmat: np.ndarray,
    q_pids: np.ndarray | Sequence[int],
    g_pids: np.ndarray | Sequence[int],
    q_camids: np.ndarray | Sequence[int] | None = None,
    g_camids: np.ndarray | Sequence[int] | None = None,
    *,
    sysu_removal: bool,
    max_rank: int = 20,
    stable: bool = False,
    chunk: int = 1024,
    unique_ids_cmc: bool | None = None,
) -> RankingResult:
    """Metrics from a distance matrix ``[Q, G]`` (smaller = more similar).

    ``sysu_removal`` applies the camera-3/camera-2 rule and needs camera ids.
    ``unique_ids_cmc`` defaults to ``sysu_removal`` (``eval_sysu``: unique-identity CMC;
    ``eval_regdb``: standard CMC). For a similarity matrix pass
    ``distance_from_similarity(sim)``.
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D, got shape {distmat.shape}")
    nq, ng = distmat.shape
    q_pids = _as_1d("q_pids", q_pids, nq)
    g_pids = _as_1d("g_pids", g_pids, ng)
    q_cam = None if q_camids is None else _as_1d("q_camids", q_camids, nq)
    g_cam = None if g_camids is None else _as_1d("g_camids", g_camids, ng)
    chunks = ((sl, distmat[sl]) for sl in _row_slices(nq, chunk))
    return _evaluate_chunks(chunks, q_pids, g_pids, q_cam, g_cam, sysu_removal=sysu_removal,
                            max_rank=max_rank, stable=stable, unique_ids_cmc=unique_ids_cmc)


def evaluate_features(
    q_feat: np.ndarray,
    g_feat: np.ndarray,
    q_pids: np.ndarray | Sequence[int],
    g_pids: np.ndarray | Sequence[int],
    q_camids: np.ndarray | Sequence[int] | None = None,
    g_camids: np.ndarray | Sequence[int] | None = None,
    *,
    sysu_removal: bool,
    max_rank: int = 20,
    stable: bool = False,
    chunk: int = 1024,
    unique_ids_cmc: bool | None = None,
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray] = cosine_distance,
) -> RankingResult:
    """Metrics from features, computing ``distance(q_chunk, g)`` one chunk of queries at a time.

    The full ``[Q, G]`` matrix is never held: memory is bounded by ``chunk``.
    """
    q_feat = np.asarray(q_feat)
    g_feat = np.asarray(g_feat)
    if q_feat.ndim != 2 or g_feat.ndim != 2 or q_feat.shape[1] != g_feat.shape[1]:
        raise ValueError(f"features must be [Q, d] and [G, d], got {q_feat.shape} and {g_feat.shape}")
    nq, ng = q_feat.shape[0], g_feat.shape[0]
    q_pids = _as_1d("q_pids", q_pids, nq)
    g_pids = _as_1d("g_pids", g_pids, ng)
    q_cam = None if q_camids is None else _as_1d("q_camids", q_camids, nq)
    g_cam = None if g_camids is None else _as_1d("g_camids", g_camids, ng)
    if distance is cosine_distance:
        g64 = np.asarray(g_feat, dtype=np.float64)  # converted once, not per chunk
        chunks = ((sl, -(q_feat[sl].astype(np.float64) @ g64.T)) for sl in _row_slices(nq, chunk))
    else:
        chunks = ((sl, np.asarray(distance(q_feat[sl], g_feat))) for sl in _row_slices(nq, chunk))
    return _evaluate_chunks(chunks, q_pids, g_pids, q_cam, g_cam, sysu_removal=sysu_removal,
                            max_rank=max_rank, stable=stable, unique_ids_cmc=unique_ids_cmc)


def summarize_trials(per_trial: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and population standard deviation (ddof=0) of each metric over trials."""
    if not per_trial:
        raise ValueError("no trial results to summarise")
    keys = list(per_trial[0])
    for i, t in enumerate(per_trial):
        if list(t) != keys:
            raise ValueError(f"trial {i} has metrics {sorted(t)}, expected {sorted(keys)}")
    mean = {k: float(np.mean([t[k] for t in per_trial])) for k in keys}
    std = {k: float(np.std([t[k] for t in per_trial])) for k in keys}
    return mean, std
