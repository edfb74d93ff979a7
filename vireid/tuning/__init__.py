"""Ray Tune search over the memory size S and the distillation temperature T."""

from vireid.tuning.search import (
    SearchIncomplete,
    asha,
    best_params,
    cpus_needed,
    experiment_name,
    run_search,
    search_space,
    summarize,
    trial_config,
)

__all__ = [
    "SearchIncomplete",
    "asha",
    "best_params",
    "cpus_needed",
    "experiment_name",
    "run_search",
    "search_space",
    "summarize",
    "trial_config",
]
