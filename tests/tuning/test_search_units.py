"""Search space, trial configuration, experiment naming and the summary arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.tune.search.sample import Categorical, Float

from tests.tuning.conftest import tiny_config
from vireid.config import ConfigError
from vireid.tuning.results import best_params, summarize_search
from vireid.tuning.space import (
    cpus_needed,
    experiment_name,
    rung_epochs,
    search_space,
    trial_config,
)


def test_trial_config_sets_s_t_and_the_trial_schedule(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    t = trial_config(cfg, 4, 2.5)
    assert (t.model.memory_size, t.loss.temperature) == (4, 2.5)
    assert t.train.epochs == cfg.tune.epochs and t.train.validate_every == 1
    assert t.data == cfg.data and t.tune == cfg.tune
    with pytest.raises(ConfigError, match="model.memory_size"):
        trial_config(cfg, 0, 2.0)


def test_search_space_is_the_configured_choice_and_log_range(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    space = search_space(cfg)
    assert isinstance(space["memory_size"], Categorical)
    assert list(space["memory_size"].categories) == [1, 2, 4]
    assert isinstance(space["temperature"], Float)
    assert (space["temperature"].lower, space["temperature"].upper) == (1.0, 8.0)
    assert type(space["temperature"].sampler).__name__ == "_LogUniform"
    fixed = search_space(tiny_config(tmp_path, temperature_min=3.0, temperature_max=3.0))
    assert fixed["temperature"] == 3.0


def test_experiment_name_follows_the_inputs(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    m = {"sha256_total": "abc"}
    assert experiment_name(cfg, m) == experiment_name(tiny_config(tmp_path), m)
    assert experiment_name(cfg, m) != experiment_name(cfg, {"sha256_total": "abd"})
    assert experiment_name(cfg, m) != experiment_name(tiny_config(tmp_path, num_samples=5), m)


def test_resources_and_rungs(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, max_concurrent=2)
    assert cpus_needed(cfg) == 2 * (1 + 1 * 1)
    assert rung_epochs(tiny_config(tmp_path)) == [1, 2]
    assert rung_epochs(tiny_config(tmp_path, epochs=8, grace_period=1, reduction_factor=2)) == [1, 2, 4]


def _trial(tid: str, s: int, t: float, maps: list[float], error: str | None = None,
           scores: list[float] | None = None) -> dict:
    """A collected trial; ``scores`` (the judged metric per epoch) default to the mAPs."""
    scores = maps if scores is None else scores
    return {"trial_id": tid, "memory_size": s, "temperature": t, "error": error,
            "history": [{"epoch": i + 1, "val_mAP": v, "score": sc, "val_rank1": None, "loss": None}
                        for i, (v, sc) in enumerate(zip(maps, scores, strict=True))]}


def test_summary_counts_and_picks_the_best_survivor(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)  # max_t 3
    trials = [_trial("a", 1, 2.0, [0.1, 0.2, 0.3]), _trial("b", 2, 4.0, [0.5]),  # b: stopped early
              _trial("c", 4, 1.5, [0.2, 0.35, 0.31]), _trial("d", 2, 7.0, [0.1, 0.12])]
    s = summarize_search(cfg, trials, name="x", experiment_path="/x")
    assert s["num_trials"] == 4 and s["num_early_stopped"] == 2 and s["num_completed"] == 2
    assert s["trial_epochs_used"] == 3 + 1 + 3 + 2 and s["trial_epochs_full"] == 12
    assert s["trial_epochs_saved"] == 12 - 9
    # b has the highest mAP but was stopped after epoch 1: the best is a survivor, c at epoch 3
    assert s["best"]["trial_id"] == "c" and s["best"]["val_mAP"] == 0.31
    assert best_params(s) == {"model": {"memory_size": 4}, "loss": {"temperature": 1.5}}
    rows = {r["trial_id"]: r for r in s["trials"]}
    assert rows["c"]["best_val_mAP"] == 0.35 and rows["c"]["final_val_mAP"] == 0.31


def test_summary_judges_trials_on_the_configured_metric(tmp_path: Path) -> None:
    """The best survivor is the one with the highest tune.metric at its last epoch: here the
    running mean, which prefers steady a over c's lucky last epoch."""
    cfg = tiny_config(tmp_path)
    assert cfg.tune.metric == "val_mAP_mean"
    trials = [_trial("a", 1, 2.0, [0.30, 0.30, 0.30], scores=[0.30, 0.30, 0.30]),
              _trial("c", 4, 1.5, [0.10, 0.10, 0.40], scores=[0.10, 0.10, 0.20])]
    s = summarize_search(cfg, trials, name="x", experiment_path="/x")
    assert s["metric"] == "val_mAP_mean" and "val_mAP_mean" in s["best_rule"]
    assert s["best"]["trial_id"] == "a" and s["best"]["score"] == 0.30 and s["best"]["val_mAP"] == 0.30
    rows = {r["trial_id"]: r for r in s["trials"]}
    assert rows["c"]["final_val_mAP"] == 0.40 and rows["c"]["final_score"] == 0.20
    last = summarize_search(tiny_config(tmp_path, metric="val_mAP"),
                            [_trial("a", 1, 2.0, [0.30, 0.30, 0.30]), _trial("c", 4, 1.5, [0.10, 0.10, 0.40])],
                            name="x", experiment_path="/x")
    assert last["best"]["trial_id"] == "c" and last["metric"] == "val_mAP"


def test_tune_metric_is_checked_and_drives_asha(tmp_path: Path) -> None:
    from vireid.config import replace
    from vireid.tuning.space import judged_metric, scheduler

    with pytest.raises(ConfigError, match="tune.metric"):
        tiny_config(tmp_path, metric="val_rank1")
    cfg = replace(tiny_config(tmp_path, epochs=4, grace_period=1), train={"warmup_epochs": 1, "epochs": 5})
    assert judged_metric(cfg) == "val_mAP_mean" and scheduler(cfg).metric == "val_mAP_mean"
    assert scheduler(tiny_config(tmp_path, metric="val_mAP")).metric == "val_mAP"
    m = {"sha256_total": "abc"}  # a different judgment is a different search
    assert experiment_name(cfg, m) != experiment_name(replace(cfg, tune={"metric": "val_mAP"}), m)


def test_summary_without_any_metric_has_no_best(tmp_path: Path) -> None:
    s = summarize_search(tiny_config(tmp_path), [_trial("a", 1, 2.0, [], error="boom")], name="x",
                  experiment_path="/x")
    assert s["best"] is None and s["num_errored"] == 1
    with pytest.raises(RuntimeError, match="no trial reported"):
        best_params(s)


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def test_asha_rungs_are_counted_after_the_warm_up(tmp_path: Path) -> None:
    from ray.tune.schedulers import TrialScheduler

    from vireid.config import replace
    from vireid.tuning.space import scheduler, trial_epochs

    cfg = replace(tiny_config(tmp_path, epochs=4, grace_period=1, reduction_factor=2),
                  train={"warmup_epochs": 3, "epochs": 7})
    assert trial_epochs(cfg) == 7 and trial_config(cfg, 2, 2.0).train.epochs == 7  # warm-up + tune.epochs
    assert rung_epochs(cfg) == [4, 5]  # 3 + 1, 3 + 2: never a warm-up epoch
    asha = scheduler(cfg)
    good, weak = _Trial("good"), _Trial("weak")
    for trial in (good, weak):
        asha.on_trial_add(None, trial)
    for epoch in (1, 2, 3):  # warm-up: the weak trial is far behind, and is not stopped
        assert asha.on_trial_result(None, good, {"epoch": epoch, "val_mAP_mean": 0.5}) == TrialScheduler.CONTINUE
        assert asha.on_trial_result(None, weak, {"epoch": epoch, "val_mAP_mean": 0.01}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, good, {"epoch": 4, "val_mAP_mean": 0.6}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, weak, {"epoch": 4, "val_mAP_mean": 0.1}) == TrialScheduler.STOP  # first rung
    assert asha.on_trial_result(None, good, {"epoch": 7, "val_mAP_mean": 0.7}) == TrialScheduler.STOP  # max_t: 3 + 4


def test_fifo_runs_every_trial_to_the_end(tmp_path: Path) -> None:
    from ray.tune.schedulers import FIFOScheduler

    from vireid.tuning.space import scheduler

    cfg = tiny_config(tmp_path, scheduler="fifo")
    assert isinstance(scheduler(cfg), FIFOScheduler) and rung_epochs(cfg) == []
    s = summarize_search(cfg, [_trial("a", 1, 2.0, [0.1, 0.2, 0.3])], name="x", experiment_path="/x")
    assert s["scheduler"]["name"] == "FIFO" and s["scheduler"]["rungs"] == []
    with pytest.raises(ConfigError, match="tune.scheduler"):
        tiny_config(tmp_path, scheduler="hyperband")
