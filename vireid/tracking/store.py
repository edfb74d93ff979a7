"""Where runs and models go: tracking-URI resolution, the local store, clients.

The library never looks at the environment: the pipeline hands in the repository root and
the ``track`` config section. ``track.tracking_uri`` empty selects the local store

- backend (runs, metrics, model registry): ``sqlite:///<repo>/mlruns/mlflow.db``
- artifacts (models, plots): ``<repo>/mlruns/artifacts`` (the experiment's artifact location)

The local store is always the one under the repository handed in: the train stage records it
as ``{"store": "local"}`` (not as an absolute path), and a recorded run or an experiment whose
artifacts live in another checkout's store (``mlruns/`` copied or moved along with the
checkout: MLflow keeps absolute artifact paths) is refused (:func:`check_recorded_run`,
:func:`ensure_experiment`) rather than silently logging into the original checkout.

A real server is used by setting ``track.tracking_uri`` (``http://host:5000``); the model
registry needs a database-backed store, which both of these are (a plain ``file:`` store is
refused).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vireid.config import TrackConfig

LOCAL_DIR = "mlruns"  # beside the repository root
LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "artifacts"


class TrackingError(RuntimeError):
    """A tracking store, run, record file or registered model is missing or unusable."""


@dataclass(frozen=True)
class TrackingTarget:
    """A resolved store: URI, artifact location for new experiments (None: the store's
    default), experiment name, and whether it is the project's local default store."""

    tracking_uri: str
    artifact_location: str | None
    experiment: str
    local: bool = False


def local_store(repo_root: str | os.PathLike[str]) -> tuple[str, str]:
    """``(tracking_uri, artifact_location)`` of the local store under ``repo_root``."""
    base = Path(repo_root).resolve() / LOCAL_DIR
    return f"sqlite:///{base / LOCAL_DB}", str(base / LOCAL_ARTIFACTS)


def resolve_target(track: TrackConfig, repo_root: str | os.PathLike[str]) -> TrackingTarget:
    """The store named by ``track`` (empty URI: the local store under ``repo_root``)."""
    if not track.tracking_uri:
        uri, artifacts = local_store(repo_root)
        return TrackingTarget(uri, track.artifact_location or artifacts, track.experiment,
                              local=not track.artifact_location)
    uri = track.tracking_uri
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme in ("", "file") and uri != "databricks":
        raise TrackingError(
            f"track.tracking_uri: {uri!r} is a file store, which has no model registry; use "
            "a database URI (sqlite:///path/mlflow.db, postgresql://...) or a server "
            "(http://host:5000), or leave it empty for the local sqlite store")
    return TrackingTarget(uri, track.artifact_location or None, track.experiment)


def is_server_uri(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` names a tracking server (reachable from other machines), not
    a store in this machine's files (sqlite, a folder)."""
    return tracking_uri.startswith(("http://", "https://", "databricks"))


def check_server(tracking_uri: str, timeout: float = 5.0) -> None:
    """For a tracking server URI (``http(s)://``), ask its ``/health`` endpoint once with a
    short ``timeout``; a server that does not answer is a :class:`TrackingError` now (MLflow's
    own client would retry for minutes, then fail with a traceback). Other URIs: nothing."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only)
            response.read(64)
    except urllib.error.HTTPError as e:
        if e.code < 500:  # it answers (an authenticating proxy may refuse /health): reachable
            return
        raise TrackingError(f"track.tracking_uri: {tracking_uri}: the MLflow server answers "
                            f"HTTP {e.code} on /health (check the server's log)") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise TrackingError(f"track.tracking_uri: {tracking_uri}: no MLflow server answers within "
                            f"{timeout:g} s ({reason}) (start it, or fix the address)") from None


def check_reachable_from_nodes(tracking_uri: str, nodes: int) -> None:
    """Refuse a store in this machine's files when ``nodes`` > 1 Ray nodes log to it."""
    if nodes > 1 and not is_server_uri(tracking_uri):
        raise TrackingError(
            f"track.tracking_uri: {tracking_uri} is a store on this machine, but the Ray cluster of "
            f"train.ray_address has {nodes} nodes whose workers log to it; use an MLflow server every "
            "node reaches (http://...; infra/README.md)")


def check_store_exists(tracking_uri: str) -> None:
    """For a command that only reads (search, restore): a ``sqlite:///`` store whose database
    file does not exist is a :class:`TrackingError` (opening it would create an empty store,
    and its folder, wherever the URI points); a server is asked with :func:`check_server`."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        db = Path(tracking_uri[len(prefix):])
        if str(db) != ":memory:" and not db.is_file():
            raise TrackingError(f"{tracking_uri}: no MLflow store there (nothing is registered or logged in it; "
                                "run the pipeline first, or pass --tracking-uri / --params of the store)")
    else:
        check_server(tracking_uri)


def prepare_store(tracking_uri: str) -> None:
    """Create the folder of a ``sqlite:///`` database file (sqlite does not)."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        db = Path(tracking_uri[len(prefix):])
        if str(db) != ":memory:":
            db.parent.mkdir(parents=True, exist_ok=True)


def client(tracking_uri: str):  # -> mlflow.MlflowClient (import kept lazy: mlflow is slow to import)
    """An ``MlflowClient`` bound to ``tracking_uri`` for both tracking and registry."""
    from mlflow import MlflowClient

    prepare_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def append_tag(tracking_uri: str, run_id: str, key: str, value: str) -> str:
    """Add ``value`` to the run's comma-separated tag ``key`` unless it already ends with it
    (a restart on the same node adds nothing); return the tag's new value."""
    c = client(tracking_uri)
    values = [v for v in c.get_run(run_id).data.tags.get(key, "").split(",") if v]
    if not values or values[-1] != value:
        values.append(value)
        c.set_tag(run_id, key, ",".join(values))
    return ",".join(values)


@contextmanager
def use_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at ``tracking_uri`` for the
    block (needed by fluent-only APIs: ``log_model``, ``models:/`` loading), then restore
    them and the variables MLflow exports for subprocesses."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    prepare_store(tracking_uri)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri).resolve()


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None = None, *,
                      require_artifact_location: bool = False) -> str:
    """Id of experiment ``name``, created (with ``artifact_location``) when missing.

    ``require_artifact_location`` (the local default store): an existing experiment must keep
    its artifacts under ``artifact_location``; one that keeps them elsewhere comes from a
    store copied from another checkout and is refused.
    """
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # created concurrently by another stage or worker
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise TrackingError(
            f"track.experiment: experiment {name!r} in {tracking_uri} is deleted; restore it "
            f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or pick another name")
    if require_artifact_location and artifact_location and exp.artifact_location and \
            not local_path(exp.artifact_location).is_relative_to(local_path(artifact_location)):
        raise TrackingError(
            f"{tracking_uri}: experiment {name!r} keeps its artifacts in {exp.artifact_location}, "
            f"not in this project's {artifact_location}: the store was copied from another checkout "
            "(move mlruns/ aside, e.g. mv mlruns mlruns.copied, and rerun the train stage)")
    return exp.experiment_id
