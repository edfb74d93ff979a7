"""The local store belongs to the project: the run record names it relative to the project,
and a copied or moved checkout never logs into the original one (refused, clearly)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vireid.config import TrackConfig
from vireid.tracking import (
    TrackingError,
    read_run_record,
    resolve_target,
    run_record,
    start_pipeline_run,
)
from vireid.tracking.runs import check_recorded_run, record_tracking_uri
from vireid.tracking.store import local_store


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A project with a local store, one pipeline run and its record (as the train stage writes it)."""
    repo = tmp_path_factory.mktemp("projects") / "a"
    repo.mkdir()
    target = resolve_target(TrackConfig(experiment="loc"), repo)
    assert target.local
    run_id = start_pipeline_run(target, config={"x": 1}, git_commit="c", data_hash="d", dataset="sysu", protocol="")
    (repo / "outputs").mkdir()
    (repo / "outputs" / "mlflow_run.json").write_text(json.dumps(run_record(target, run_id, repo)))
    return repo, run_id


def test_record_is_project_relative(project) -> None:
    repo, run_id = project
    text = (repo / "outputs" / "mlflow_run.json").read_text()
    assert str(repo) not in text
    record = read_run_record(repo / "outputs" / "mlflow_run.json")
    assert record["store"] == "local" and record["tracking_uri"] == "sqlite:///mlruns/mlflow.db"
    assert record_tracking_uri(record, repo) == local_store(repo)[0]
    target = resolve_target(TrackConfig(experiment="loc"), repo)
    assert check_recorded_run(record, "mlflow_run.json", target, repo) == run_id


def test_copied_checkout_refuses_the_original_store(project) -> None:
    repo, run_id = project
    copy = repo.parent / "b"
    shutil.copytree(repo, copy)
    target = resolve_target(TrackConfig(experiment="loc"), copy)
    record_file = copy / "outputs" / "mlflow_run.json"
    # the copied record resolves to the copy's store, but the run's artifacts are the original's
    with pytest.raises(TrackingError) as err:
        check_recorded_run(read_run_record(record_file), record_file, target, copy)
    assert str(err.value).startswith(f"{record_file}: run {run_id} keeps its artifacts in {repo / 'mlruns'}")
    assert "copied from another checkout" in str(err.value)
    # a record with the original's absolute URI (as recorded before): refused, naming both stores
    old = {"format": "vireid-mlflow-run/1", "run_id": run_id, "tracking_uri": local_store(repo)[0],
           "experiment": "loc"}
    with pytest.raises(TrackingError, match=f"^{record_file}: run {run_id} is recorded in store "
                                            f"{local_store(repo)[0]}, but this project's store is"):
        check_recorded_run(old, record_file, target, copy)
    # a new run in the copy would put its artifacts into the original checkout: refused
    with pytest.raises(TrackingError, match="keeps its artifacts in .*/a/mlruns/artifacts, not in this project's"):
        start_pipeline_run(target, config={}, git_commit="c", data_hash="d", dataset="sysu", protocol="")
    assert not list((repo / "mlruns" / "artifacts").glob("*/*/artifacts/*"))


def test_another_store_configured_refuses_the_local_record(project, tmp_path: Path) -> None:
    repo, run_id = project
    other = resolve_target(TrackConfig(tracking_uri=f"sqlite:///{tmp_path / 'x.db'}", experiment="loc"), repo)
    record = read_run_record(repo / "outputs" / "mlflow_run.json")
    with pytest.raises(TrackingError, match="track.tracking_uri changed"):
        check_recorded_run(record, "mlflow_run.json", other, repo)


def test_a_store_in_this_machines_files_is_refused_when_several_nodes_log_to_it() -> None:
    from vireid.tracking.store import check_reachable_from_nodes

    for uri in ("sqlite:////p/mlruns/mlflow.db", "/p/mlruns", "file:///p/mlruns"):
        check_reachable_from_nodes(uri, 1)  # one node: its own files are fine
        with pytest.raises(TrackingError, match=r"track\.tracking_uri: .* has 3 nodes .*http://"):
            check_reachable_from_nodes(uri, 3)
    check_reachable_from_nodes("http://mlflow.example:5000", 3)
    check_reachable_from_nodes("https://mlflow.example", 2)
