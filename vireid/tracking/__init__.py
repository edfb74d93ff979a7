"""MLflow tracking and model registry of the pipeline (one run per pipeline run)."""

from vireid.modeling.export import ExportableEmbedder
from vireid.tracking.model import (
    UnsafeModelError,
    check_export,
    check_pt2_model,
    load_logged_embedder,
    log_embedder,
    pip_requirements,
)
from vireid.tracking.provenance import git_commit
from vireid.tracking.registry import Decision, decide, protocol_key, register
from vireid.tracking.runs import (
    MetricLogger,
    end_run,
    flatten_metrics,
    flatten_params,
    headline_value,
    log_artifacts,
    log_metrics,
    log_metrics_json,
    log_plots,
    metric_key,
    read_run_record,
    resume_run,
    resumed_run,
    run_record,
    start_pipeline_run,
)
from vireid.tracking.store import (
    TrackingError,
    TrackingTarget,
    ensure_experiment,
    local_store,
    resolve_target,
    use_tracking_uri,
)

__all__ = [
    "Decision",
    "ExportableEmbedder",
    "MetricLogger",
    "TrackingError",
    "TrackingTarget",
    "UnsafeModelError",
    "check_export",
    "check_pt2_model",
    "decide",
    "end_run",
    "ensure_experiment",
    "flatten_metrics",
    "flatten_params",
    "git_commit",
    "headline_value",
    "load_logged_embedder",
    "local_store",
    "log_artifacts",
    "log_embedder",
    "log_metrics",
    "log_metrics_json",
    "log_plots",
    "metric_key",
    "pip_requirements",
    "protocol_key",
    "read_run_record",
    "register",
    "resolve_target",
    "resume_run",
    "resumed_run",
    "run_record",
    "start_pipeline_run",
    "use_tracking_uri",
]
