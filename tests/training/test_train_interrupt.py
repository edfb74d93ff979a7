"""Issue 25 item 10: Ctrl-C in the train stage. Ray Train replaces Python's SIGINT handler by
its own, which aborts the run and lets ``fit`` return (or exits 0): the stage used to end with
exit code 1 and Ray's message only. Now: ``error: interrupted (rerun resumes from the
checkpoint of epoch N)``, exit code 130, the outputs of the last run untouched. ``fit`` is
replaced by one that behaves as Ray Train's does on Ctrl-C (no Ray started: seconds)."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from pipelines import train as train_entry
from tests._params import params_file
from vireid.config import config_to_dict
from vireid.errors import run_entry
from vireid.stages import train as train_stage


def test_ctrl_c_in_train_is_one_line_exit_130_and_keeps_the_outputs(tiny_shards, tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    shards, cfg = tiny_shards
    params = params_file(tmp_path / "params.yaml", config_to_dict(cfg) | {
        "track": {**config_to_dict(cfg)["track"], "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    out = tmp_path / "train"
    out.mkdir()
    old = {name: f"last run's {name}".encode() for name in ("model.pt", "train_summary.json", "history.csv")}
    for name, data in old.items():
        (out / name).write_bytes(data)

    def fit_aborted_by_ray(cfg: Any, shards_dir: Path, out_dir: Path, storage: Any, **kwargs: Any) -> dict:
        signal.signal(signal.SIGINT, lambda signum, frame: None)  # Ray's: aborts the controller, returns
        for epoch, checkpoint in ((2, object()), (3, object()), (4, None)):
            for callback in kwargs.get("callbacks", ()):
                callback.after_report(None, [{"epoch": epoch, "loss": 1.0}], checkpoint)
        os.kill(os.getpid(), signal.SIGINT)
        for name in old:  # fit exports the latest checkpoint of the aborted run
            (out_dir / name).write_bytes(b"half-trained")
        return {"history": [], "val_metrics": {}, "selected_epoch": 4, "images_per_s": 0.0, "wall_seconds": 1.0,
                "epochs": 4}

    monkeypatch.setattr(train_stage, "fit", fit_aborted_by_ray)
    # Python's own handler before the stage, as in a fresh process (an earlier test of this pytest
    # process may have run Ray Train's fit directly, which leaves Ray's handler installed)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = run_entry(train_entry.main, ["--params", str(params), "--shards", str(shards), "--out", str(out)])
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)
    err = [ln for ln in capsys.readouterr().err.splitlines() if " INFO " not in ln and " WARNING " not in ln]
    assert code == 130 and err == ["error: interrupted (rerun resumes from the checkpoint of epoch 3)"]
    assert {name: (out / name).read_bytes() for name in old} == old
    assert sorted(p.name for p in out.iterdir()) == sorted(old)  # no staging folder, no mlflow_run.json
    assert after is signal.default_int_handler  # Ray's handler is gone


def test_a_rerun_after_a_crash_continues_the_same_mlflow_run(tiny_shards, tmp_path: Path, caplog,
                                                             monkeypatch) -> None:
    """Issue 24 item 7: each rerun after a crash opened a new MLflow run, splitting one
    training's curves. Now the rerun continues the unfinished run of the same training; once
    the training finished, a forced rerun opens a new run."""
    from vireid.tracking.store import client

    shards, cfg = tiny_shards
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = params_file(tmp_path / "params.yaml", config_to_dict(cfg) | {
        "track": {**config_to_dict(cfg)["track"], "tracking_uri": uri}})
    out = tmp_path / "train"
    handed: list[str] = []

    def fit_that_crashes_once(cfg: Any, shards_dir: Path, out_dir: Path, storage: Any, **kwargs: Any) -> dict:
        handed.append(kwargs["tracking"]["run_id"])
        if len(handed) == 1:
            raise RuntimeError("worker died in epoch 3")
        for name in ("model.pt", "train_summary.json", "history.csv"):
            (out_dir / name).write_bytes(b"trained")
        return {"history": [], "val_metrics": {"val_mAP": 0.5}, "selected_epoch": 4, "images_per_s": 9.0,
                "wall_seconds": 1.0, "epochs": 4}

    monkeypatch.setattr(train_stage, "fit", fit_that_crashes_once)
    argv = ["--params", str(params), "--shards", str(shards), "--out", str(out)]
    with pytest.raises(RuntimeError, match="worker died"):
        run_entry(train_entry.main, argv)
    assert client(uri).get_run(handed[0]).info.status == "FAILED"
    with caplog.at_level(logging.INFO, logger="vireid.stages.train"):
        assert run_entry(train_entry.main, argv) == 0  # the rerun resumes the training ...
    assert handed[1] == handed[0]  # ... in the same MLflow run
    run = client(uri).get_run(handed[0])
    assert run.info.status == "FINISHED" and run.data.tags["vireid.train_done"] == "true"
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == handed[0]
    assert any(f"MLflow run {handed[0]}" in r.getMessage() and "continued" in r.getMessage()
               for r in caplog.records)
    assert run_entry(train_entry.main, argv) == 0  # a finished training: a forced rerun is a new run
    assert handed[2] != handed[0]
    assert len(client(uri).search_runs([run.info.experiment_id])) == 2
