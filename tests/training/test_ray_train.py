"""Ray Train: a short data-parallel run, worker-death recovery, and resuming a rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.conftest import tiny_config
from vireid.training.checkpoint import load_model, load_train_state, read_model_file
from vireid.training.ray_train import ReportLog, fit, logged_epochs

# xdist_group: under `make test` (pytest -n 2 --dist loadgroup) the modules that start Ray run
# one after another on one worker: never two Ray instances at once, the other core runs the rest.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

LOSS_TERMS = ("id", "tri", "dual", "fuse", "kd")


@pytest.fixture(scope="module")
def setup(tiny_shards, tmp_path_factory):
    shards, cfg = tiny_shards
    cfg = tiny_config(Path(cfg.data.root), num_workers=2, epochs=2)
    return shards, cfg, tmp_path_factory.mktemp("ray")


class SeenInMlflow(ReportLog):
    """Writes, at each report, the epochs whose ``epoch/...`` metrics the MLflow run already
    holds (the controller is another process: the record goes to a file)."""

    def __init__(self, path: Path, tracking: dict) -> None:
        super().__init__(path)
        self.tracking = tracking

    def after_report(self, run_context, metrics, checkpoint) -> None:
        seen = sorted(logged_epochs(self.tracking["tracking_uri"], self.tracking["run_id"]))
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"epoch": metrics[0]["epoch"], "in_mlflow": seen}) + "\n")


def _reports(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _state(summary: dict) -> dict:
    return load_train_state(Path(summary["checkpoint_path"]) / "train_state.pt")


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(local_ray, setup):
    """An uninterrupted 2-worker, 2-epoch run (on the session's local Ray, tests/conftest.py)."""
    shards, cfg, base = setup
    log = base / "ref.jsonl"
    summary = fit(cfg, shards, base / "ref_out", base / "storage", name="ref", callbacks=[ReportLog(log)])
    return summary, _reports(log), base / "ref_out"


def test_short_run_completes_and_reports(reference) -> None:
    summary, reports, out = reference
    assert [r["epoch"] for r in reports] == [1, 2]
    for r in reports:
        assert r["checkpoint"] is True
        assert set(LOSS_TERMS) <= set(r) and "loss" in r and r["images_per_s"] > 0
        assert r["loss"] == pytest.approx(sum(r[k] for k in LOSS_TERMS))
        assert 0.0 <= r["val_mAP"] <= 1.0 and 0.0 <= r["val_rank1"] <= 1.0
    assert summary["epochs"] == 2 and summary["epochs_completed"] == 2 and summary["num_workers"] == 2
    best = max(reports, key=lambda r: (r["val_mAP"], -r["epoch"]))
    assert summary["selected_epoch"] == best["epoch"]
    assert summary["val_metrics"]["val_mAP"] == pytest.approx(best["val_mAP"])
    assert "infrared" in summary["selection"] and "never the test set" in summary["val_protocol"]
    model, meta = load_model(out / "model.pt", arch="tiny", dataset="sysu")
    assert meta["selected_epoch"] == best["epoch"]
    on_disk = json.loads((out / "train_summary.json").read_text())
    assert on_disk["selected_epoch"] == summary["selected_epoch"] and len(on_disk["history"]) == 2
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,") and len(lines) == 3


def test_worker_death_is_recovered_from_the_last_checkpoint(reference, setup) -> None:
    ref_summary, _, ref_out = reference
    shards, cfg, base = setup
    log, marker = base / "fault.jsonl", base / "fault.marker"
    summary = fit(cfg, shards, base / "fault_out", base / "storage", name="fault",
                  callbacks=[ReportLog(log)], fault={"epoch": 2, "rank": 1, "marker": str(marker)})
    assert marker.exists(), "the fault hook did not kill the worker"
    reports = _reports(log)
    assert [r["epoch"] for r in reports] == [1, 2]  # epoch 1 (checkpointed) never ran again
    assert [r["attempt"] for r in reports] == [0, 1]  # epoch 2 ran in the restarted worker group
    assert summary["attempts"] == 2
    # the recovered run equals the uninterrupted one
    assert _same_weights(_state(summary)["model"], _state(ref_summary)["model"])
    assert _same_weights(read_model_file(base / "fault_out/model.pt")["model"],
                         read_model_file(ref_out / "model.pt")["model"])
    assert summary["val_metrics"] == ref_summary["val_metrics"]
    ref_hist = ref_summary["history"]
    for a, b in zip(summary["history"], ref_hist, strict=True):
        assert a["loss"] == b["loss"] and a["val_mAP"] == b["val_mAP"]


def test_rerun_of_an_interrupted_run_resumes_and_a_finished_one_does_not_retrain(reference, setup) -> None:
    ref_summary, _, _ = reference
    shards, cfg, base = setup
    storage = base / "storage"
    from vireid.config import replace
    from vireid.tracking import resolve_target, start_pipeline_run
    from vireid.tracking.store import client

    no_retry = replace(cfg, train={"max_failures": 0})
    # issue 24 item 7: rank 0 logs each epoch to MLflow as it ends, a rerun continues the curve
    target = resolve_target(replace(cfg, track={"tracking_uri": f"sqlite:///{base / 'mlflow.db'}"}).track, base)
    tracking = {"tracking_uri": target.tracking_uri,
                "run_id": start_pipeline_run(target, config={}, git_commit="c", data_hash="", dataset="sysu",
                                             protocol="")}
    log1, marker, live = base / "stop1.jsonl", base / "stop.marker", base / "live.jsonl"
    with pytest.raises(Exception, match="(?i)fail|worker|died|exit"):
        fit(no_retry, shards, base / "stop_out", storage, name="stop", callbacks=[ReportLog(log1),
            SeenInMlflow(live, tracking)], fault={"epoch": 2, "rank": 0, "marker": str(marker)},
            tracking=tracking)
    assert [r["epoch"] for r in _reports(log1)] == [1]
    assert not (base / "stop_out/model.pt").exists()
    # rerun the same run: continues after epoch 1
    log2 = base / "stop2.jsonl"
    summary = fit(no_retry, shards, base / "stop_out", storage, name="stop", callbacks=[ReportLog(log2),
                  SeenInMlflow(live, tracking)], tracking=tracking)
    assert [r["epoch"] for r in _reports(log2)] == [2]
    # each epoch was in the store when its report reached the driver, before training ended
    assert _reports(live) == [{"epoch": 1, "in_mlflow": [1]}, {"epoch": 2, "in_mlflow": [1, 2]}]
    history = client(target.tracking_uri).get_metric_history(tracking["run_id"], "epoch/loss")
    assert sorted(m.step for m in history) == [1, 2]  # one point per epoch: nothing logged twice
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == \
        pytest.approx([h["loss"] for h in summary["history"]])
    val = client(target.tracking_uri).get_metric_history(tracking["run_id"], "epoch/val_mAP")
    assert sorted(m.step for m in val) == [1, 2]
    assert _same_weights(_state(summary)["model"], _state(ref_summary)["model"])
    assert [h["attempt"] for h in summary["history"]] == [0, 1]
    # rerun a finished run: nothing is trained again, the same model is exported
    log3 = base / "stop3.jsonl"
    fresh = {**tracking, "run_id": start_pipeline_run(target, config={}, git_commit="c", data_hash="",
                                                       dataset="sysu", protocol="")}
    again = fit(no_retry, shards, base / "again_out", storage, name="stop", callbacks=[ReportLog(log3)],
                tracking=fresh)
    assert _reports(log3) == []
    # a new MLflow run for a finished training receives the restored epochs once
    assert sorted(m.step for m in client(target.tracking_uri).get_metric_history(fresh["run_id"],
                                                                                 "epoch/loss")) == [1, 2]
    assert again["history"] == summary["history"]
    assert _same_weights(read_model_file(base / "again_out/model.pt")["model"],
                         read_model_file(base / "stop_out/model.pt")["model"])
