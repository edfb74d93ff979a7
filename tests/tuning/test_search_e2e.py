"""A real search: 2 trials x 3 epochs of the tiny model on a generated shard set, interrupted
after its first trial finished, then resumed; outputs, ASHA bookkeeping and MLflow checked."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import ray.tune
import yaml

from vireid.config import Config, replace
from vireid.tracking.store import TrackingTarget, client
from vireid.tuning.run import SearchIncomplete, run_search
from vireid.tuning.space import rung_epochs
from vireid.tuning.tracking import PARENT_TAG, TAG_EXPERIMENT, TAG_ROLE, TAG_TRIAL

# xdist_group: under `make test` (pytest -n 2 --dist loadgroup) the modules that start Ray run
# one after another on one worker: never two Ray instances at once, the other core runs the rest.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


class InterruptAfterFirstTrial(ray.tune.Callback):
    """Interrupts the experiment like Ctrl+C would (Tune's SIGUSR1 handler: state saved,
    unfinished trials left to resume) once one trial has finished, and records that trial in
    ``marker``. Once only: Tuner.restore brings the experiment's callbacks back, this one
    included, and the marker file keeps the restored copy from interrupting again."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_trial_complete(self, iteration: int, trials: list, trial: object, **info: object) -> None:
        if not self.marker.exists():
            self.marker.write_text(trial.trial_id)  # type: ignore[attr-defined]
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.timeout(900)
def test_search_interrupted_then_resumed(tiny_search: tuple[Path, Config], local_ray: None,
                                      tmp_path: Path) -> None:
    shards, cfg = tiny_search
    cfg = replace(cfg, tune={"num_samples": 2})  # each trial starts a Ray Train run: ~1 min here
    target = TrackingTarget(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
                            str(tmp_path / "mlruns" / "artifacts"), "tune-test")
    storage, out = tmp_path / "ray", tmp_path / "out"

    marker = tmp_path / "interrupted-after"
    with pytest.raises(SearchIncomplete, match="interrupted"):
        run_search(cfg, shards, storage, out, tracking=target,
                   callbacks=[InterruptAfterFirstTrial(marker)])
    first = marker.read_text()
    assert not (out / "summary.json").exists()  # nothing written for an unfinished search

    summary = run_search(cfg, shards, storage, out, tracking=target)

    # outputs agree with each other
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best == {"model": {"memory_size": summary["best"]["memory_size"]},
                    "loss": {"temperature": summary["best"]["temperature"]}}
    assert (out / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = summary["trials"]
    assert summary["num_trials"] == len(rows) == 2 and summary["num_errored"] == 0
    for r in rows:
        assert r["memory_size"] in cfg.tune.memory_sizes
        assert cfg.tune.temperature_min <= r["temperature"] <= cfg.tune.temperature_max
    # ASHA bookkeeping: a trial ran to max_t or was stopped at a rung
    rungs = rung_epochs(cfg)
    for r in rows:
        assert r["completed"] != r["early_stopped"]
        assert r["epochs_run"] == cfg.tune.epochs if r["completed"] else r["epochs_run"] in rungs
    assert summary["trial_epochs_used"] == sum(r["epochs_run"] for r in rows)
    assert summary["trial_epochs_used"] + summary["trial_epochs_saved"] == 2 * cfg.tune.epochs
    assert summary["num_early_stopped"] == sum(r["early_stopped"] for r in rows)
    survivors = [r for r in rows if r["completed"]]
    assert survivors, "ASHA always lets at least the first trial reach max_t"
    # judged on tune.metric (the running mean of val_mAP after the warm-up), not the last val_mAP
    assert summary["metric"] == cfg.tune.metric == "val_mAP_mean"
    top = max(survivors, key=lambda r: r["final_score"])
    assert summary["best"]["trial_id"] == top["trial_id"]
    assert summary["best"]["val_mAP"] == top["final_val_mAP"]
    assert summary["best"]["score"] == top["final_score"]

    # MLflow: one parent, a child per trial with S, T and per-epoch val_mAP
    c = client(target.tracking_uri)
    exp = c.get_experiment_by_name("tune-test")
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_EXPERIMENT}` = '{summary['experiment']}'")
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "tune-parent"]
    children = [r for r in runs if r.data.tags.get(TAG_ROLE) == "tune-trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["best.memory_size"] == str(summary["best"]["memory_size"])
    assert len(children) == 2
    by_trial = {ch.data.tags[TAG_TRIAL]: ch for ch in children}
    assert set(by_trial) == {r["trial_id"] for r in rows}
    for r in rows:
        ch = by_trial[r["trial_id"]]
        assert ch.data.tags[PARENT_TAG] == parents[0].info.run_id
        assert ch.data.params["memory_size"] == str(r["memory_size"])
        assert float(ch.data.params["temperature"]) == pytest.approx(r["temperature"])
        hist = c.get_metric_history(ch.info.run_id, "val_mAP")
        assert sorted({m.step for m in hist}) == list(range(1, r["epochs_run"] + 1))
        # the judged metric reached Tune and MLflow each epoch: the running mean of val_mAP
        # (warm-up 0 here), the trial's final score its last value
        val = {m.step: m.value for m in hist}
        means = {m.step: m.value for m in c.get_metric_history(ch.info.run_id, "val_mAP_mean")}
        assert sorted(means) == sorted(val)
        for e in val:
            assert means[e] == pytest.approx(sum(val[i] for i in range(1, e + 1)) / e)
        assert r["final_score"] == pytest.approx(means[r["epochs_run"]])
        # ended with its outcome, also when ASHA stopped it (run_trial never returned)
        assert ch.info.status == "FINISHED"
        assert ch.data.tags["vireid.trial_outcome"] == ("completed" if r["completed"] else "early_stopped")
    # resume: the trial that finished before the interruption was not run again
    assert first in by_trial
    assert by_trial[first].data.metrics["trial_starts"] == 1
    first_row = next(r for r in rows if r["trial_id"] == first)
    assert first_row["epochs_run"] >= 1
