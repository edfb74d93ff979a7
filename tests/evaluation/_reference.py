"""Per-query loop in the style of the AGW reference (eval_sysu / eval_regdb), for checks
on the host itself (numpy's default argsort tie order depends on the CPU).

Where queries see different numbers of distinct identities (the reference fails there),
each short per-query CMC row is extended with its last value: the documented behaviour
of vireid.evaluation.metrics.
"""

from __future__ import annotations

import numpy as np


def reference_eval(distmat, q_pids, g_pids, q_camids=None, g_camids=None, *, sysu: bool,
                   max_rank: int = 20, stable: bool = False):
    """-> (cmc float32, mAP, mINP, ap [Q] (nan invalid), inp [Q], valid [Q])."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind="stable" if stable else None)
    pred = g_pids[indices]
    matches = (pred == q_pids[:, None]).astype(np.int32)
    rows, ap, inp, valid = [], np.full(num_q, np.nan), np.full(num_q, np.nan), np.zeros(num_q, bool)
    for q in range(num_q):
        order = indices[q]
        keep = ~((q_camids[q] == 3) & (g_camids[order] == 2)) if sysu else np.ones(num_g, bool)
        raw = matches[q][keep]
        if sysu:
            labels = pred[q][keep]
            first = np.unique(labels, return_index=True)[1]
            uniq = np.array([labels[i] for i in sorted(first)])
            row = (uniq == q_pids[q]).astype(np.int32).cumsum()[:max_rank]
        else:
            row = np.minimum(raw.cumsum(), 1)[:max_rank]
        rows.append(row)
        if not raw.any():
            continue
        valid[q] = True
        cmc = raw.cumsum()
        last = np.max(np.where(raw == 1))
        inp[q] = cmc[last] / (last + 1.0)
        ap[q] = (np.asarray([x / (i + 1.0) for i, x in enumerate(cmc)]) * raw).sum() / raw.sum()
    length = max(len(r) for r in rows)
    padded = [np.concatenate([r, np.full(length - len(r), r[-1])]) for r in rows]
    if not sysu:
        padded = [p for p, v in zip(padded, valid, strict=True) if v]
    cmc = np.asarray(padded).astype(np.float32).sum(0) / valid.sum()
    return cmc, np.mean(ap[valid]), np.mean(inp[valid]), ap, inp, valid
