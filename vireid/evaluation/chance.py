"""The chance level of a protocol: its metrics on random unit embeddings.

A result means something only next to what a model that knows nothing gets on the same
queries and galleries (the gallery size, the number of true matches per query and the
camera rules all set it). :func:`chance_level` runs a protocol on ``draws`` independent
draws of random unit vectors and averages its metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

CHANCE_DRAWS = 10  # random embeddings averaged (the make-run target's definition)
CHANCE_DIM = 64  # width of the random embeddings


def random_unit_embeddings(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, dim]`` float32 rows drawn uniformly on the unit sphere."""
    f = rng.standard_normal((n, dim)).astype(np.float32)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def chance_level(protocol: Callable[[np.ndarray, np.ndarray], Mapping[str, float]], n_query: int,
                 n_gallery: int, *, draws: int = CHANCE_DRAWS, dim: int = CHANCE_DIM,
                 seed: int = 0) -> dict[str, float]:
    """Mean of ``protocol(query_features, gallery_features)`` (a metric dict) over ``draws``
    draws of random unit embeddings for the ``n_query`` queries and ``n_gallery`` gallery
    images; the same ``seed`` gives the same numbers."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    rng = np.random.default_rng(seed)
    sums: dict[str, float] = {}
    for _ in range(draws):
        qf = random_unit_embeddings(n_query, dim, rng)
        gf = random_unit_embeddings(n_gallery, dim, rng)
        for k, v in protocol(qf, gf).items():
            sums[k] = sums.get(k, 0.0) + float(v) / draws
    return sums
