"""Every trial's MLflow child run ends with its outcome when the search finishes: a trial
ASHA stopped (or whose driver was killed) never reaches the end of ``run_trial``."""

from __future__ import annotations

from pathlib import Path

from tests.tuning.conftest import tiny_config
from vireid.tracking.store import TrackingTarget, client
from vireid.tuning.tracking import TAG_OUTCOME, child_run, close_trial_runs, parent_run


def _row(trial_id: str, *, completed: bool = False, error: str | None = None) -> dict:
    return {"trial_id": trial_id, "completed": completed, "early_stopped": not completed and error is None,
            "error": error}


def test_stopped_and_errored_trials_do_not_stay_running(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    target = TrackingTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"), "tune-runs")
    track = parent_run(target, cfg, "search-a")
    other = parent_run(target, cfg, "search-b")  # another search's trial with the same id
    runs = {t: child_run(track, t, f"trial_{t}", 4, 2.0) for t in ("t1", "t2", "t3")}
    foreign = child_run(other, "t2", "trial_t2", 4, 2.0)
    c = client(target.tracking_uri)
    c.set_terminated(runs["t1"], "FINISHED")  # as run_trial does when fit() returns
    assert {c.get_run(r).info.status for r in runs.values()} == {"FINISHED", "RUNNING"}

    outcomes = close_trial_runs(track, [_row("t1", completed=True), _row("t2"),
                                        _row("t3", error="RuntimeError: boom"), _row("t4")])

    assert outcomes == {"t1": "completed", "t2": "early_stopped", "t3": "errored", "t4": "early_stopped"}
    status = {t: c.get_run(r).info.status for t, r in runs.items()}
    assert status == {"t1": "FINISHED", "t2": "FINISHED", "t3": "FAILED"}
    assert {t: c.get_run(r).data.tags[TAG_OUTCOME] for t, r in runs.items()} == {
        "t1": "completed", "t2": "early_stopped", "t3": "errored"}
    assert c.get_run(runs["t2"]).info.end_time is not None
    # the other search's run is left as it was
    assert c.get_run(foreign).info.status == "RUNNING"
    assert TAG_OUTCOME not in c.get_run(foreign).data.tags
