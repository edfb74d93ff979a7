"""MLflow for the search: one parent run per experiment, one child run per trial, found again on resume."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.tune

from vireid.config import Config, config_to_dict
from vireid.tracking.store import TrackingTarget, client, ensure_experiment
from vireid.tracking.tags import (
    MLFLOW_PARENT_RUN,
    TAG_BEST_PREFIX,
    TAG_TUNE_EXPERIMENT,
    TAG_TUNE_OUTCOME,
    TAG_TUNE_ROLE,
    TAG_TUNE_TRIAL,
)
from vireid.tuning.space import TIME_ATTR

log = logging.getLogger(__name__)


# the tag names (vireid.tracking.tags), under the names this module's callers know
PARENT_TAG, TAG_EXPERIMENT, TAG_ROLE, TAG_TRIAL, TAG_OUTCOME = (
    MLFLOW_PARENT_RUN, TAG_TUNE_EXPERIMENT, TAG_TUNE_ROLE, TAG_TUNE_TRIAL, TAG_TUNE_OUTCOME)


@dataclass(frozen=True)
class Tracking:
    """Where the trials log: the store, the experiment id and the parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    name: str  # Tune experiment name (tag on parent and children)


def _find_run(tracking_uri: str, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client(tracking_uri).search_runs([experiment_id], filter_string=query, max_results=1,
                                            order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def parent_run(target: TrackingTarget, cfg: Config, name: str) -> Tracking:
    """The experiment's parent run (created once; found again by its tags on resume)."""
    exp_id = ensure_experiment(target.tracking_uri, target.experiment, target.artifact_location)
    tags = {TAG_EXPERIMENT: name, TAG_ROLE: "tune-parent"}
    run_id = _find_run(target.tracking_uri, exp_id, tags)
    c = client(target.tracking_uri)
    if run_id is None:
        run = c.create_run(exp_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        from mlflow.entities import Param

        t = config_to_dict(cfg.tune)
        c.log_batch(run_id, params=[Param(f"tune.{k}", str(v)) for k, v in t.items()])
    else:
        c.update_run(run_id, status="RUNNING")
    return Tracking(target.tracking_uri, exp_id, run_id, name)


def child_run(tracking: Tracking, trial_id: str, trial_name: str, memory_size: int,
              temperature: float) -> str:
    """The trial's child run (tag ``mlflow.parentRunId``); reused when the trial restarts.
    Logs params ``memory_size``/``temperature`` and counts starts in metric ``trial_starts``."""
    tags = {TAG_EXPERIMENT: tracking.name, TAG_TRIAL: trial_id, PARENT_TAG: tracking.parent_run_id}
    c = client(tracking.tracking_uri)
    run_id = _find_run(tracking.tracking_uri, tracking.experiment_id, tags)
    starts = 1
    if run_id is None:
        run_id = c.create_run(tracking.experiment_id, run_name=trial_name,
                              tags={**tags, TAG_ROLE: "tune-trial"}).info.run_id
        c.log_param(run_id, "memory_size", str(memory_size))
        c.log_param(run_id, "temperature", repr(float(temperature)))
    else:
        c.update_run(run_id, status="RUNNING")
        previous = c.get_run(run_id).data.metrics.get("trial_starts", 0)
        starts = int(previous) + 1
    c.log_metric(run_id, "trial_starts", starts, step=starts)
    return run_id


class EpochLogger(ray.train.UserCallback):
    """Ray Train callback: each epoch's reported metrics to the trial's MLflow run, at
    step = epoch."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from mlflow.entities import Metric

        record = metrics[0]
        step = int(record.get(TIME_ATTR, 0))
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in record.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        client(self.tracking_uri).log_batch(self.run_id, metrics=batch)


def close_trial_runs(track: Tracking, rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """End every trial's child run with its outcome (``summarize_search``'s rows): a trial
    ASHA stopped, or whose driver was killed, never reaches the end of ``run_trial`` and would
    stay RUNNING. Errored trials end FAILED, the others FINISHED; each gets the tag
    ``vireid.trial_outcome``. Returns ``{trial_id: outcome}``."""
    c = client(track.tracking_uri)
    query = f"tags.`{PARENT_TAG}` = '{track.parent_run_id}' and tags.`{TAG_EXPERIMENT}` = '{track.name}'"
    runs = {r.data.tags.get(TAG_TRIAL): r for r in c.search_runs([track.experiment_id], filter_string=query)}
    outcomes: dict[str, str] = {}
    for r in rows:
        outcome = "errored" if r["error"] else "completed" if r["completed"] else "early_stopped"
        outcomes[str(r["trial_id"])] = outcome
        run = runs.get(str(r["trial_id"]))
        if run is None:  # the trial never started its run (failed before run_trial)
            continue
        c.set_tag(run.info.run_id, TAG_OUTCOME, outcome)
        status = "FAILED" if outcome == "errored" else "FINISHED"
        if run.info.status != status:
            c.set_terminated(run.info.run_id, status)
    return outcomes


def finish_parent(track: Tracking, summary: Mapping[str, Any], out_dir: str | Path) -> None:
    """Every trial's child run ended with its outcome (:func:`close_trial_runs`); best S/T and
    ASHA's numbers on the parent run, the outputs as its artifacts; FINISHED."""
    close_trial_runs(track, summary["trials"])
    c = client(track.tracking_uri)
    metrics = {k: summary[k] for k in ("num_trials", "num_early_stopped", "trial_epochs_used",
                                       "trial_epochs_full", "trial_epochs_saved")}
    if summary["best"]:
        metrics["best_val_mAP"] = summary["best"]["val_mAP"]
        if summary["best"].get("score") is not None:
            metrics["best_score"] = summary["best"]["score"]  # tune.metric at the best trial's last epoch
        c.set_tag(track.parent_run_id, f"{TAG_BEST_PREFIX}memory_size", str(summary["best"]["memory_size"]))
        c.set_tag(track.parent_run_id, f"{TAG_BEST_PREFIX}temperature", repr(summary["best"]["temperature"]))
    for k, v in metrics.items():
        c.log_metric(track.parent_run_id, k, float(v))
    for f in ("best_params.yaml", "summary.json", "tune.png"):
        c.log_artifact(track.parent_run_id, str(Path(out_dir) / f))
    c.set_terminated(track.parent_run_id, "FINISHED")
