"""The chance level: random unit embeddings through a protocol, averaged over draws."""

from __future__ import annotations

import numpy as np
import pytest

from vireid.evaluation.chance import chance_level, random_unit_embeddings
from vireid.evaluation.metrics import evaluate_features


def _one_match_in_ten(n_query: int) -> tuple[np.ndarray, np.ndarray]:
    q_ids = np.arange(n_query)
    g_ids = np.concatenate([q_ids, np.full(9 * n_query, -1)])  # one true match among G = 10 n
    return q_ids, g_ids


def test_chance_map_of_one_true_match_is_the_mean_reciprocal_rank() -> None:
    # one true match per query, uniformly ranked among G items: E[AP] = H_G / G
    n = 40
    q_ids, g_ids = _one_match_in_ten(n)
    cams_q, cams_g = np.ones(n, dtype=int), np.full(len(g_ids), 2)

    def protocol(qf: np.ndarray, gf: np.ndarray) -> dict[str, float]:
        s = evaluate_features(qf, gf, q_ids, g_ids, cams_q, cams_g, sysu_removal=False,
                              unique_ids_cmc=False).summary()
        return {"mAP": s["mAP"], "rank1": s["rank1"]}

    got = chance_level(protocol, n, len(g_ids), draws=25)
    g = len(g_ids)
    harmonic = sum(1.0 / k for k in range(1, g + 1))
    assert got["mAP"] == pytest.approx(harmonic / g, rel=0.25)
    assert got["rank1"] == pytest.approx(1.0 / g, abs=0.01)
    assert chance_level(protocol, n, g, draws=25) == got  # same seed, same numbers
    assert chance_level(protocol, n, g, draws=25, seed=1) != got


def test_random_unit_embeddings_are_unit_rows_and_draws_are_checked() -> None:
    f = random_unit_embeddings(50, 64, np.random.default_rng(0))
    assert f.shape == (50, 64) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="draws"):
        chance_level(lambda q, g: {}, 1, 1, draws=0)
