"""Names of the MLflow tags vireid sets: on pipeline runs, registered model versions, tune runs.

Every tag name is defined here once; the modules that set or read a tag import its name.
"""

from __future__ import annotations

# --- MLflow's own tags ------------------------------------------------------------------
#: The commit shown by the MLflow UI (set beside :data:`TAG_GIT_COMMIT`).
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
#: Nests a run under its parent in the MLflow UI (the tune stage's trial runs).
MLFLOW_PARENT_RUN = "mlflow.parentRunId"

# --- tags of a pipeline run (vireid.tracking.runs.start_pipeline_run) -----------------
TAG_GIT_COMMIT = "git_commit"
TAG_DATA_HASH = "data_hash"  # the shards' sha256_total
TAG_DATASET = "dataset"
TAG_PROTOCOL = "protocol"  # vireid.tracking.registry.protocol_key
#: The Ray Train run (``train-<fingerprint>``) whose training this run logs; a rerun of the
#: train stage after a crash finds the run by it and continues it.
TAG_TRAIN_RUN = "vireid.train_run"
#: ``true`` once the train stage finished its training (a later rerun starts a new run).
TAG_TRAIN_DONE = "vireid.train_done"
#: Prefix of the evaluate stage's provenance tags: ``eval.<provenance key>``.
TAG_EVAL_PREFIX = "eval."
#: The register stage's outcome on the run.
TAG_REGISTERED_VERSION = "registered_version"
TAG_REGISTERED_ALIAS = "registered_alias"

# --- tags of a registered model version (vireid.tracking.registry) ---------------------
# also TAG_PROTOCOL, TAG_DATA_HASH and TAG_GIT_COMMIT, as on the run
TAG_HEADLINE = "headline"
TAG_VALUE = "headline_value"
TAG_RUN_ID = "run_id"
TAG_DECISION = "decision"  # champion | challenger; written last: the registration is complete
TAG_REASON = "reason"
TAG_MODEL_SHA = "model_sha256"  # the registered model.pt (idempotence fingerprint)
TAG_EVAL_SHA = "eval_sha256"  # its metrics.json (idempotence fingerprint)
TAG_DATA_KIND = "data_kind"  # synthetic | real | unknown

# --- tags of the tune stage's runs (vireid.tuning.search) -------------------------------
TAG_TUNE_EXPERIMENT = "vireid.tune_experiment"
TAG_TUNE_ROLE = "vireid.role"  # tune-parent | tune-trial
TAG_TUNE_TRIAL = "vireid.tune_trial_id"
#: How a trial ended, on its child run: completed | early_stopped | errored
TAG_TUNE_OUTCOME = "vireid.trial_outcome"
#: The Ray node ids a run's rank-0 training worker ran on, comma-separated in order (one more
#: each time the run restarts on another node): the train stage's run and each trial's run.
TAG_RAY_NODES = "vireid.ray_nodes"
#: The Ray node ids a trial's driver (the Tune function trainable) ran on, in the same way.
TAG_TRIAL_NODES = "vireid.trial_nodes"
#: Prefix of the best trial's values on the tune parent run: ``best.memory_size``, ``best.temperature``.
TAG_BEST_PREFIX = "best."

# --- tags of a pipeline run set by `vireid publish` (vireid.tracking.pipeline_state) ---------
#: ``published`` once dvc.lock, params.yaml, the metrics and registration.json are logged
#: under the run's ``pipeline/`` artifacts (set last: the state is complete).
TAG_PIPELINE_STATE = "pipeline_state"
TAG_PIPELINE_LOCK_MD5 = "pipeline_state.dvc_lock_md5"  # md5 of the published dvc.lock
