"""One MLflow run per pipeline run: start (train stage), resume (later stages), logging.

The train stage calls :func:`start_pipeline_run` and writes :func:`run_record` to a small
JSON file beside its outputs (``outputs/train/mlflow_run.json``); later stages read it with
:func:`read_run_record` and log into the same run inside :func:`resumed_run`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vireid.tracking.store import (
    LOCAL_DB,
    LOCAL_DIR,
    TrackingError,
    TrackingTarget,
    client,
    ensure_experiment,
    local_path,
    local_store,
)
from vireid.tracking.tags import (
    MLFLOW_GIT_COMMIT,
    TAG_DATA_HASH,
    TAG_DATASET,
    TAG_GIT_COMMIT,
    TAG_PROTOCOL,
    TAG_TRAIN_DONE,
    TAG_TRAIN_RUN,
)

RUN_RECORD_FORMAT = "vireid-mlflow-run/1"
_MAX_PARAMS = 100  # MLflow's limit of params (and tags) per log_batch
_MAX_METRICS = 1000  # MLflow's limit of metrics per log_batch
_MAX_KEY = 250
_BAD_CHARS = re.compile(r"[^/\w.\- ]")  # MLflow-legal on every OS: no colon (Windows)


def metric_key(name: str) -> str:
    """An MLflow-legal metric/param name: illegal characters -> ``_``, no empty, ``.`` or
    ``..`` path parts, at most 250 characters (``"loss:id"`` -> ``"loss_id"``)."""
    parts = [p for p in _BAD_CHARS.sub("_", str(name)).split("/") if p not in ("", ".")]
    key = "/".join("_" if p == ".." else p for p in parts) or "_"
    return key[:_MAX_KEY]


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict -> flat ``{"model.memory_size": "8", "train.milestones": "[8, 11]"}``."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[metric_key(name)] = json.dumps(list(value))
        else:
            out[metric_key(name)] = str(value)
    return out


def flatten_metrics(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of a nested ``metrics.json`` object under a ``/``-joined,
    MLflow-legal key; list items are keyed by their index (``sysu/all/single/per_trial/0/mAP``);
    strings, booleans and non-finite numbers are left out."""
    out: dict[str, float] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{name}/{k}" if name else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{name}/{i}" if name else str(i))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[metric_key(name)] = float(value)

    walk(tree, prefix.rstrip("/"))
    return out


def headline_value(metrics: Mapping[str, Any], headline: str) -> float:
    """Value of ``headline`` (``sysu/all/single/mAP``) in a ``metrics.json`` object: its flat
    key, else the entry's ``mean``; a clear error when the protocol was not evaluated."""
    value = metrics.get(headline)
    if value is None and "/" in headline:
        entry_key, name = headline.rsplit("/", 1)
        entry = metrics.get(entry_key)
        if isinstance(entry, Mapping) and isinstance(entry.get("mean"), Mapping):
            value = entry["mean"].get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        known = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and "/" in k)
        raise TrackingError(f"eval.headline: {headline!r} is not in metrics.json "
                            f"(numeric keys: {', '.join(known) or 'none'})")
    return float(value)


def _tags(git_commit: str, data_hash: str, dataset: str, protocol: str,
          extra: Mapping[str, str] | None) -> dict[str, str]:
    tags = {TAG_GIT_COMMIT: git_commit, TAG_DATA_HASH: data_hash, TAG_DATASET: dataset,
            TAG_PROTOCOL: protocol}
    if git_commit:
        tags[MLFLOW_GIT_COMMIT] = git_commit  # shown by the MLflow UI
    tags.update(extra or {})
    return {k: str(v) for k, v in tags.items()}


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log flat params (values stringified) in batches of MLflow's limit."""
    from mlflow.entities import Param

    c = client(tracking_uri)
    items = [Param(metric_key(k), str(v)) for k, v in params.items()]
    for i in range(0, len(items), _MAX_PARAMS):
        c.log_batch(run_id, params=items[i:i + _MAX_PARAMS])


def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set run tags (values stringified) in batches of MLflow's limit."""
    from mlflow.entities import RunTag

    c = client(tracking_uri)
    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for i in range(0, len(items), _MAX_PARAMS):
        c.log_batch(run_id, tags=items[i:i + _MAX_PARAMS])


def start_pipeline_run(
    target: TrackingTarget,
    *,
    config: Mapping[str, Any],
    git_commit: str,
    data_hash: str,
    dataset: str,
    protocol: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create the pipeline's run (train stage) and return its id; the run stays RUNNING
    until :func:`end_run`.

    ``config``: the whole config as a nested plain dict (``config_to_dict(cfg)``), logged as
    flat params ``model.memory_size``...; tags: ``git_commit``, ``data_hash`` (the prepare
    stage's ``manifest.json`` ``sha256_total``), ``dataset``, ``protocol`` and ``tags``.
    """
    experiment_id = ensure_experiment(target.tracking_uri, target.experiment, target.artifact_location,
                                      require_artifact_location=target.local)
    c = client(target.tracking_uri)
    run = c.create_run(experiment_id, run_name=run_name,
                       tags=_tags(git_commit, data_hash, dataset, protocol, tags))
    log_params(target.tracking_uri, run.info.run_id, flatten_params(config))
    return run.info.run_id


def unfinished_training_run(target: TrackingTarget, train_run: str) -> str | None:
    """The newest run of ``target``'s experiment that logs Ray Train run ``train_run``
    (:data:`TAG_TRAIN_RUN`) and whose training never finished (no :data:`TAG_TRAIN_DONE`):
    a train stage that crashed or was interrupted (its status FAILED, KILLED, or RUNNING
    when the process was killed). None when there is none."""
    exp_id = ensure_experiment(target.tracking_uri, target.experiment, target.artifact_location,
                               require_artifact_location=target.local)
    runs = client(target.tracking_uri).search_runs(
        [exp_id], filter_string=f"tags.`{TAG_TRAIN_RUN}` = '{train_run}'", max_results=50,
        order_by=["attributes.start_time DESC"])
    for run in runs:
        if run.data.tags.get(TAG_TRAIN_DONE) != "true" and run.info.lifecycle_stage == "active":
            return run.info.run_id
    return None


def open_training_run(target: TrackingTarget, train_run: str, **start: Any) -> tuple[str, bool]:
    """The train stage's MLflow run: the unfinished run of ``train_run`` (a rerun after a
    crash continues its curves), marked RUNNING again, else a new :func:`start_pipeline_run`
    (``start``: its keyword arguments) tagged with ``train_run``. Returns ``(run_id, continued)``."""
    run_id = unfinished_training_run(target, train_run)
    if run_id is not None:
        client(target.tracking_uri).update_run(run_id, status="RUNNING")
        return run_id, True
    tags = {**(start.pop("tags", None) or {}), TAG_TRAIN_RUN: train_run}
    return start_pipeline_run(target, tags=tags, **start), False


def mark_training_done(tracking_uri: str, run_id: str) -> None:
    """Tag the run's training as finished: a later rerun of the stage opens a new run."""
    set_tags(tracking_uri, run_id, {TAG_TRAIN_DONE: "true"})


def run_record(target: TrackingTarget, run_id: str, repo_root: str | os.PathLike[str] | None = None
               ) -> dict[str, str]:
    """The small JSON object the train stage writes beside its outputs. The project's local
    store (``target.local`` with ``repo_root`` given) is recorded as ``"store": "local"`` and
    a project-relative URI, never as an absolute path."""
    record = {"format": RUN_RECORD_FORMAT, "run_id": run_id, "tracking_uri": target.tracking_uri,
              "experiment": target.experiment}
    if target.local and repo_root is not None and target.tracking_uri == local_store(repo_root)[0]:
        record.update(store="local", tracking_uri=f"sqlite:///{LOCAL_DIR}/{LOCAL_DB}")
    return record


def record_tracking_uri(record: Mapping[str, str], repo_root: str | os.PathLike[str]) -> str:
    """The store of a run record: a ``"local"`` record means the local store under ``repo_root``."""
    return local_store(repo_root)[0] if record.get("store") == "local" else str(record["tracking_uri"])


def check_recorded_run(record: Mapping[str, str], path: str | os.PathLike[str], target: TrackingTarget,
                       repo_root: str | os.PathLike[str]) -> str:
    """The run id of ``record`` when it lives in ``target``'s store (and, for the local
    store, keeps its artifacts in this project); :class:`TrackingError` naming the file
    otherwise (a copied or moved checkout, or a changed ``track.tracking_uri``)."""
    run_id = str(record["run_id"])
    uri = record_tracking_uri(record, repo_root)
    if uri != target.tracking_uri:
        raise TrackingError(
            f"{path}: run {run_id} is recorded in store {uri}, but this project's store is "
            f"{target.tracking_uri} (a copied or moved checkout, or track.tracking_uri changed; "
            "rerun the train stage: dvc repro -f train)")
    run = get_run(target.tracking_uri, run_id)
    if target.local and target.artifact_location and run.info.artifact_uri and \
            not local_path(run.info.artifact_uri).is_relative_to(local_path(target.artifact_location)):
        raise TrackingError(
            f"{path}: run {run_id} keeps its artifacts in {run.info.artifact_uri}, outside this "
            f"project's {target.artifact_location}: mlruns/ was copied from another checkout (move "
            "it aside, e.g. mv mlruns mlruns.copied, and rerun the train stage)")
    return run_id


def read_run_record(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a :func:`run_record` file; :class:`TrackingError` names the file when it is
    missing or malformed."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrackingError(f"{path}: no MLflow run record (the train stage writes it)") from None
    except (OSError, ValueError) as e:
        raise TrackingError(f"{path}: unreadable MLflow run record ({e})") from e
    if not isinstance(record, dict) or record.get("format") != RUN_RECORD_FORMAT or not record.get("run_id"):
        raise TrackingError(f"{path}: not a {RUN_RECORD_FORMAT} record with a run_id")
    return record


def get_run(tracking_uri: str, run_id: str):  # -> mlflow.entities.Run
    """The run, or :class:`TrackingError` saying it is not in this store or deleted."""
    from mlflow.exceptions import MlflowException

    try:
        run = client(tracking_uri).get_run(run_id)
    except MlflowException as e:
        raise TrackingError(f"MLflow run {run_id} not found in {tracking_uri} ({e.message})") from e
    if run.info.lifecycle_stage != "active":
        raise TrackingError(f"MLflow run {run_id} in {tracking_uri} is deleted")
    return run


def resume_run(tracking_uri: str, run_id: str) -> None:
    """Mark an existing run RUNNING again (a later stage logs into it)."""
    get_run(tracking_uri, run_id)
    client(tracking_uri).update_run(run_id, status="RUNNING")


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run ``FINISHED`` (or ``FAILED``/``KILLED``)."""
    client(tracking_uri).set_terminated(run_id, status=status)


@contextmanager
def resumed_run(tracking_uri: str, run_id: str) -> Iterator[str]:
    """``with resumed_run(uri, run_id): ...``: RUNNING inside, FINISHED after, FAILED when
    the block raises."""
    resume_run(tracking_uri, run_id)
    try:
        yield run_id
    except BaseException:
        end_run(tracking_uri, run_id, "FAILED")
        raise
    end_run(tracking_uri, run_id, "FINISHED")


class MetricLogger:
    """Buffered per-step metric logging (training rank 0: every loss term, every step).

    :meth:`log` only appends to a list; the buffer goes out in one ``log_batch`` call when it
    holds ``flush_every`` values or ``flush_seconds`` passed since the last flush, and at
    :meth:`close` (also the end of a ``with`` block). Values are floats (call ``.item()`` on
    tensors yourself so the device sync is explicit).
    """

    def __init__(self, tracking_uri: str, run_id: str, *, flush_every: int = 500,
                 flush_seconds: float = 15.0) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.flush_every, self.flush_seconds = int(flush_every), float(flush_seconds)
        self._client = client(tracking_uri)
        self._buffer: list[Any] = []
        self._keys: dict[str, str] = {}  # name -> legal key, so each name is sanitised once
        self._last_flush = time.monotonic()
        self.calls = 0  # log_batch requests sent (for tests and benchmarks)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step`` (timestamp: now)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for name, value in metrics.items():
            key = self._keys.get(name)
            if key is None:
                key = self._keys[name] = metric_key(name)
            self._buffer.append(Metric(key, float(value), ts, int(step)))
        if len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Send everything queued (in chunks of MLflow's 1000-metric batch limit)."""
        buffer, self._buffer = self._buffer, []
        for i in range(0, len(buffer), _MAX_METRICS):
            self._client.log_batch(self.run_id, metrics=buffer[i:i + _MAX_METRICS])
            self.calls += 1
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush the rest."""
        self.flush()

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log a flat ``{name: value}`` dict at ``step`` in as few requests as MLflow allows."""
    with MetricLogger(tracking_uri, run_id, flush_every=_MAX_METRICS) as logger:
        logger.log(metrics, step)


def log_metrics_json(tracking_uri: str, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> dict[str, float]:
    """Log a ``metrics.json`` object flattened by :func:`flatten_metrics`; returns what was logged."""
    flat = flatten_metrics(metrics)
    log_metrics(tracking_uri, run_id, flat, step)
    return flat


def log_artifacts(tracking_uri: str, run_id: str, paths: Iterable[str | os.PathLike[str]],
                  artifact_path: str | None = None) -> list[str]:
    """Upload files (plots, reports) to the run under ``artifact_path``; returns their names.
    A missing file is an error naming it."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise TrackingError(f"{p}: no such file to log as an artifact")
    c = client(tracking_uri)
    for p in paths:
        c.log_artifact(run_id, str(p), artifact_path)
    return [p.name for p in paths]


def log_plots(tracking_uri: str, run_id: str, paths: Sequence[str | os.PathLike[str]],
              artifact_path: str = "plots") -> list[str]:
    """Upload PNG plots under ``plots/``; anything that is not a ``.png`` file is refused."""
    for p in paths:
        if Path(p).suffix.lower() != ".png":
            raise TrackingError(f"{p}: not a PNG plot")
    return log_artifacts(tracking_uri, run_id, paths, artifact_path)
