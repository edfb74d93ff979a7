"""Evaluation protocols (SYSU-MM01, RegDB), metrics, re-ranking, extraction and reports.

Submodules: ``metrics`` (vectorised ranking metrics), ``sysu`` (gallery samplers and
protocol), ``regdb`` (both directions, trial check), ``rerank``, ``extract`` (needs torch),
``report`` (metrics.json, CSV, PNGs).
"""

from vireid.evaluation.metrics import (
    RankingResult,
    cosine_distance,
    distance_from_similarity,
    evaluate_features,
    evaluate_ranking,
    summarize_trials,
)
from vireid.evaluation.regdb import (
    TrialMismatchError,
    aggregate_regdb,
    check_regdb_trial,
    regdb_protocol,
)
from vireid.evaluation.sysu import (
    OfficialPermutations,
    ProtocolResult,
    community_gallery,
    load_official_permutations,
    official_gallery,
    sysu_protocol,
    sysu_protocols,
)

__all__ = [
    "OfficialPermutations",
    "ProtocolResult",
    "RankingResult",
    "TrialMismatchError",
    "aggregate_regdb",
    "check_regdb_trial",
    "community_gallery",
    "cosine_distance",
    "distance_from_similarity",
    "evaluate_features",
    "evaluate_ranking",
    "load_official_permutations",
    "official_gallery",
    "regdb_protocol",
    "summarize_trials",
    "sysu_protocol",
    "sysu_protocols",
]
