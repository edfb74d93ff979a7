"""Runs: start/resume, params and tags, batched metric logging, metrics.json, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from vireid.config import TrackConfig
from vireid.io import atomic_write_json
from vireid.tracking import (
    MetricLogger,
    TrackingError,
    flatten_metrics,
    flatten_params,
    headline_value,
    log_metrics_json,
    log_plots,
    metric_key,
    read_run_record,
    resolve_target,
    resumed_run,
    run_record,
    start_pipeline_run,
)


def _client(target):
    return MlflowClient(target.tracking_uri)


def test_local_store_lives_under_the_repo(tmp_path: Path) -> None:
    t = resolve_target(TrackConfig(), tmp_path)
    assert t.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert t.artifact_location == str(tmp_path.resolve() / "mlruns" / "artifacts")
    server = resolve_target(TrackConfig(tracking_uri="http://127.0.0.1:5000"), tmp_path)
    assert server.tracking_uri == "http://127.0.0.1:5000" and server.artifact_location is None
    with pytest.raises(TrackingError, match="file store"):
        resolve_target(TrackConfig(tracking_uri="file:///tmp/mlruns"), tmp_path)


def test_names_are_made_mlflow_legal() -> None:
    assert metric_key("loss:id") == "loss_id"
    assert metric_key("sysu/all/single/mAP") == "sysu/all/single/mAP"
    assert metric_key("/a//b/./../c") == "a/b/_/c"
    assert len(metric_key("x" * 400)) == 250
    assert flatten_params({"model": {"memory_size": 8}, "train": {"milestones": [8, 11]}}) == {
        "model.memory_size": "8", "train.milestones": "[8, 11]"}


def test_start_resume_and_run_record(target, config, tmp_path: Path) -> None:
    from vireid.config import config_to_dict

    run_id = start_pipeline_run(target, config=config_to_dict(config), git_commit="c0ffee",
                                data_hash="h" * 64, dataset="sysu", protocol="sysu/all/single@community")
    run = _client(target).get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.params["model.memory_size"] == "2"
    assert run.data.params["eval.headline"] == "sysu/all/single/mAP"
    assert len(run.data.params) == len(flatten_params(config_to_dict(config)))  # > 100: batched
    assert run.data.tags["git_commit"] == "c0ffee" and run.data.tags["data_hash"] == "h" * 64
    assert run.data.tags["dataset"] == "sysu"
    assert run.data.tags["protocol"] == "sysu/all/single@community"
    assert run.data.tags["mlflow.source.git.commit"] == "c0ffee"

    record_file = tmp_path / "mlflow_run.json"
    atomic_write_json(record_file, run_record(target, run_id))
    assert read_run_record(record_file)["run_id"] == run_id
    with resumed_run(target.tracking_uri, read_run_record(record_file)["run_id"]):
        assert _client(target).get_run(run_id).info.status == "RUNNING"
    assert _client(target).get_run(run_id).info.status == "FINISHED"
    with pytest.raises(RuntimeError, match="boom"), resumed_run(target.tracking_uri, run_id):
        raise RuntimeError("boom")
    assert _client(target).get_run(run_id).info.status == "FAILED"

    with pytest.raises(TrackingError, match="not found"), resumed_run(target.tracking_uri, "0" * 32):
        pass
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TrackingError, match=str(bad)):
        read_run_record(bad)
    with pytest.raises(TrackingError, match=str(tmp_path / "missing.json")):
        read_run_record(tmp_path / "missing.json")


def test_metric_logger_batches_and_logs_every_step(target, logged) -> None:
    run_id, _ = logged
    steps = 25
    with MetricLogger(target.tracking_uri, run_id, flush_every=20, flush_seconds=3600) as logger:
        for step in range(steps):
            logger.log({"loss/id": 1.0 / (step + 1), "loss/tri": 0.5 * step, "loss:kd": float(step)}, step)
        assert logger.calls == 3  # 75 values, flushed at 21, 42, 63
    assert logger.calls == 4  # the rest at close
    c = _client(target)
    for key, expect in (("loss/id", lambda s: 1.0 / (s + 1)), ("loss/tri", lambda s: 0.5 * s),
                        ("loss_kd", float)):
        history = sorted(c.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(steps))
        assert [m.value for m in history] == pytest.approx([expect(s) for s in range(steps)])


def _metrics_json() -> dict:
    from vireid.evaluation.report import build_metrics, protocol_entry

    per_trial = [{"rank1": 0.5, "rank5": 0.7, "rank10": 0.8, "rank20": 0.9, "mAP": 0.4, "mINP": 0.2},
                 {"rank1": 0.6, "rank5": 0.8, "rank10": 0.9, "rank20": 1.0, "mAP": 0.5, "mINP": 0.3}]
    return build_metrics({"sysu/all/single": protocol_entry(per_trial, sampler="community")})


def test_metrics_json_is_flattened_and_logged(target, logged) -> None:
    run_id, _ = logged
    metrics = json.loads(json.dumps(_metrics_json()))  # as read back from metrics.json
    assert headline_value(metrics, "sysu/all/single/mAP") == pytest.approx(45.0)
    flat = log_metrics_json(target.tracking_uri, run_id, metrics)
    assert flat == flatten_metrics(metrics)
    assert flat["sysu/all/single/mAP"] == pytest.approx(45.0)
    assert flat["sysu/all/single/per_trial/1/rank1"] == pytest.approx(60.0)
    assert "units" not in flat and "sysu/all/single/sampler" not in flat
    logged_metrics = _client(target).get_run(run_id).data.metrics
    assert logged_metrics["sysu/all/single/mean/mINP"] == pytest.approx(25.0)
    assert set(flat) <= set(logged_metrics)
    with pytest.raises(TrackingError, match="sysu/indoor/single/mAP.*sysu/all/single/mAP"):
        headline_value(metrics, "sysu/indoor/single/mAP")


def test_plots_are_logged_as_png_artifacts(target, logged, tmp_path: Path) -> None:
    from vireid.evaluation.report import plot_cmc

    run_id, _ = logged
    png = plot_cmc(tmp_path / "cmc.png", {"sysu/all/single": [0.5, 0.7, 0.9]})
    assert log_plots(target.tracking_uri, run_id, [png]) == ["cmc.png"]
    assert [f.path for f in _client(target).list_artifacts(run_id, "plots")] == ["plots/cmc.png"]
    txt = tmp_path / "notes.txt"
    txt.write_text("x")
    with pytest.raises(TrackingError, match="notes.txt"):
        log_plots(target.tracking_uri, run_id, [txt])
    with pytest.raises(TrackingError, match="gone.png"):
        log_plots(target.tracking_uri, run_id, [tmp_path / "gone.png"])
