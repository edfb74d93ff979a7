"""RegDB protocol: one model per split trial, both directions, no removal rule.

Query = every test image of one modality, gallery = every test image of the other
(``v2t``: visible to thermal, ``t2v``: thermal to visible), scored as ``eval_regdb`` does
(standard CMC, no camera removal). A model trained on trial ``a`` has seen the training
identities of trial ``a`` only; testing it on trial ``b != a`` would put its training
identities in the test set, so :func:`check_regdb_trial` refuses it. Averaging over the 10
trials happens across the separately trained models: :func:`aggregate_regdb`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from vireid.config import REGDB_TRIALS
from vireid.evaluation.metrics import (
    RankingResult,
    evaluate_features,
    evaluate_ranking,
    summarize_trials,
)

#: Directions of the protocol and their report keys.
REGDB_DIRECTIONS: tuple[str, ...] = ("v2t", "t2v")


class TrialMismatchError(ValueError):
    """A RegDB model would be tested on a split it was not trained for."""


def check_regdb_trial(model_trial: int | None, eval_trial: int, *, allow_unknown: bool = False) -> None:
    """Refuse to test a model trained on RegDB trial ``model_trial`` on trial ``eval_trial``.

    ``model_trial`` is the checkpoint's ``regdb_trial`` metadata. ``None`` (unknown) is
    refused too unless ``allow_unknown`` (e.g. a model trained on another dataset).
    """
    if eval_trial not in REGDB_TRIALS:
        raise ValueError(f"RegDB evaluation trial must be in 1..10, got {eval_trial}")
    if model_trial is None:
        if allow_unknown:
            return
        raise TrialMismatchError(
            f"the model carries no regdb_trial in its checkpoint metadata, so testing it on RegDB "
            f"trial {eval_trial} cannot be checked for leaked training identities; train on trial "
            f"{eval_trial} or pass allow_unknown=True for a model never trained on RegDB")
    if int(model_trial) != int(eval_trial):
        raise TrialMismatchError(
            f"model trained on RegDB trial {model_trial} cannot be tested on trial {eval_trial}: "
            f"the test split of trial {eval_trial} contains identities the trial-{model_trial} "
            f"model trained on; evaluate it on trial {model_trial}")


def regdb_protocol(
    visible_feat: np.ndarray,
    visible_labels: np.ndarray | Sequence[int],
    thermal_feat: np.ndarray,
    thermal_labels: np.ndarray | Sequence[int],
    *,
    trial: int,
    model_trial: int | None,
    directions: Sequence[str] = REGDB_DIRECTIONS,
    stable: bool = False,
    chunk: int = 1024,
    max_rank: int = 20,
    rerank: bool = False,
    allow_unknown_trial: bool = False,
) -> dict[str, RankingResult]:
    """Both directions of one trial's test split, keyed ``v2t`` / ``t2v``.

    Refuses (``TrialMismatchError``) a model whose ``model_trial`` differs from ``trial``.
    """
    check_regdb_trial(model_trial, trial, allow_unknown=allow_unknown_trial)
    sides = {
        "v2t": (visible_feat, visible_labels, thermal_feat, thermal_labels),
        "t2v": (thermal_feat, thermal_labels, visible_feat, visible_labels),
    }
    out: dict[str, RankingResult] = {}
    for name in directions:
        if name not in sides:
            raise ValueError(f"unknown RegDB direction {name!r} (expected 'v2t' or 't2v')")
        qf, ql, gf, gl = sides[name]
        if rerank:
            from vireid.evaluation.rerank import rerank_features

            out[name] = evaluate_ranking(rerank_features(np.asarray(qf), np.asarray(gf)), ql, gl,
                                         sysu_removal=False, max_rank=max_rank, stable=stable,
                                         chunk=chunk)
        else:
            out[name] = evaluate_features(qf, gf, ql, gl, sysu_removal=False, max_rank=max_rank,
                                          stable=stable, chunk=chunk)
    return out


def aggregate_regdb(
    per_trial: Mapping[int, Mapping[str, RankingResult | Mapping[str, float]]],
) -> dict[str, dict[str, object]]:
    """Mean/std over separately trained models: ``{trial: {direction: result}}`` ->
    ``{direction: {"trials": [...], "per_trial": [...], "mean": {...}, "std": {...}}}``.

    Results may be :class:`RankingResult` or their ``summary()`` dicts (fractions).
    """
    if not per_trial:
        raise ValueError("no RegDB trial results to aggregate")
    for t in per_trial:
        if t not in REGDB_TRIALS:
            raise ValueError(f"RegDB trial must be in 1..10, got {t}")
    trials = sorted(per_trial)
    directions = list(per_trial[trials[0]])
    out: dict[str, dict[str, object]] = {}
    for d in directions:
        rows = []
        for t in trials:
            if d not in per_trial[t]:
                raise ValueError(f"RegDB trial {t} has no {d} result")
            r = per_trial[t][d]
            rows.append(r.summary() if isinstance(r, RankingResult) else dict(r))
        mean, std = summarize_trials(rows)
        out[d] = {"trials": trials, "per_trial": rows, "mean": mean, "std": std}
    return out
