"""Ray Tune search over the memory size S and the distillation temperature T.

:mod:`~vireid.tuning.space` (what is searched, ASHA), :mod:`~vireid.tuning.run` (the trials
and the search on Ray), :mod:`~vireid.tuning.tracking` (MLflow parent and child runs),
:mod:`~vireid.tuning.results` (summary and outputs), :mod:`~vireid.tuning.plot` (tune.png).
"""

from vireid.tuning.results import best_params, summarize_search
from vireid.tuning.run import SearchIncomplete, run_search
from vireid.tuning.space import (
    WarmupASHA,
    cpus_needed,
    experiment_name,
    gpus_per_worker,
    scheduler,
    search_space,
    trial_config,
    trial_resources,
)

__all__ = [
    "SearchIncomplete",
    "WarmupASHA",
    "scheduler",
    "best_params",
    "cpus_needed",
    "experiment_name",
    "gpus_per_worker",
    "run_search",
    "search_space",
    "summarize_search",
    "trial_config",
    "trial_resources",
]
