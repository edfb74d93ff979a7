"""What one trial asks Ray for (``tune.gpus_per_trial``, ``tune.cpus_per_trial``), and the
errors that name those keys. No Ray instance: the trial function runs with Tune's context
and the Ray Train run stubbed, so the resources checked are those of the real
``TorchTrainer`` the trial builds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray.train
import ray.tune
from ray.train.torch import TorchTrainer

from tests.tuning.conftest import tiny_config
from vireid.config import ConfigError, config_from_dict, config_to_dict, replace
from vireid.data.staging import ShardSource
from vireid.ray_session import local_gpus
from vireid.training import ray_train
from vireid.tuning import run as tune_run
from vireid.tuning.space import cpus_needed, gpus_per_worker, trial_config, trial_resources

_BUILD = ray_train.build_trainer  # the real one (each test replaces it while it runs)


def _config(tmp_path: Path, *, train: dict[str, Any] | None = None, **tune: Any):
    cfg = tiny_config(tmp_path)
    plain = config_to_dict(cfg)
    plain["train"].update(train or {})
    plain["tune"].update(tune)
    return config_from_dict(plain)


def _trial_trainer(cfg, monkeypatch: pytest.MonkeyPatch) -> TorchTrainer:
    """The TorchTrainer that :func:`vireid.tuning.run.run_trial` builds for ``cfg`` (its
    ``fit`` not run)."""
    built: list[TorchTrainer] = []

    def build(*args: Any, **kwargs: Any) -> Any:
        built.append(_BUILD(*args, **kwargs))
        return SimpleNamespace(fit=lambda: SimpleNamespace(error=None))

    monkeypatch.setattr(ray_train, "build_trainer", build)
    monkeypatch.setattr(tune_run, "TuneReportCallback", ray.train.UserCallback)  # needs a Tune session
    monkeypatch.setattr(ray.tune, "get_context", lambda: SimpleNamespace(
        get_trial_id=lambda: "t0001", get_trial_name=lambda: "trial_t0001"))
    tune_run.run_trial({"memory_size": 2, "temperature": 2.0}, base=config_to_dict(cfg),
                       shards=ShardSource("/nonexistent/shards"), train_storage="/tmp/vireid-unused",
                       tracking=None)
    assert len(built) == 1
    return built[0]


def _asked(trainer: TorchTrainer) -> tuple[bool, dict[str, float], dict[str, float]]:
    s = trainer.scaling_config
    return s.use_gpu, dict(s._resources_per_worker_not_none), dict(s.total_resources)


def test_half_a_gpu_per_trial_lets_two_trials_share_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path, train={"use_gpu": True}, gpus_per_trial=0.5)
    use_gpu, per_worker, total = _asked(_trial_trainer(cfg, monkeypatch))
    assert use_gpu and per_worker == {"CPU": 1, "GPU": 0.5}
    assert total["GPU"] == 0.5 and total["CPU"] == 1
    assert trial_resources(cfg) == {"CPU": 2.0, "GPU": 0.5}


def test_gpus_and_cpus_per_trial_are_split_over_the_workers(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path, train={"use_gpu": True, "num_workers": 4}, gpus_per_trial=2.0, cpus_per_trial=8)
    use_gpu, per_worker, total = _asked(_trial_trainer(cfg, monkeypatch))
    assert use_gpu and per_worker == {"CPU": 2, "GPU": 0.5}
    assert total["GPU"] == 2.0 and total["CPU"] == 8
    assert trial_config(cfg, 2, 2.0).train.cpus_per_worker == 2  # the workers' torch threads too
    assert trial_resources(cfg) == {"CPU": 9.0, "GPU": 2.0}
    assert trial_resources(replace(cfg, tune={"driver_cpus": 2.0})) == {"CPU": 10.0, "GPU": 2.0}
    assert cpus_needed(replace(cfg, tune={"max_concurrent": 3, "driver_cpus": 0.5})) == 3 * 8.5


def test_zero_keeps_the_train_stage_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = _config(tmp_path, train={"num_workers": 2, "cpus_per_worker": 3})
    use_gpu, per_worker, total = _asked(_trial_trainer(cpu, monkeypatch))
    assert not use_gpu and per_worker == {"CPU": 3} and total["CPU"] == 6 and "GPU" not in total
    assert gpus_per_worker(cpu) is None and trial_resources(cpu) == {"CPU": 7.0, "GPU": 0.0}
    gpu = _config(tmp_path, train={"use_gpu": True, "num_workers": 2})
    use_gpu, per_worker, total = _asked(_trial_trainer(gpu, monkeypatch))
    assert use_gpu and per_worker == {"CPU": 1, "GPU": 1} and total["GPU"] == 2
    assert trial_resources(gpu) == {"CPU": 3.0, "GPU": 2.0}
    # cpus_per_trial on a CPU search: more threads for the one worker
    more = _config(tmp_path, cpus_per_trial=2)
    _, per_worker, _ = _asked(_trial_trainer(more, monkeypatch))
    assert per_worker == {"CPU": 2}


@pytest.mark.parametrize(("train", "tune", "message"), [
    ({}, {"gpus_per_trial": -0.5}, r"tune\.gpus_per_trial: must be >= 0"),
    ({}, {"gpus_per_trial": float("nan")}, r"tune\.gpus_per_trial: must be a finite number"),
    ({}, {"gpus_per_trial": "half"}, r"tune\.gpus_per_trial"),
    ({}, {"gpus_per_trial": 0.5}, r"tune\.gpus_per_trial: 0\.5 GPUs per trial need train\.use_gpu: true"),
    ({"use_gpu": True}, {"gpus_per_trial": 1.5}, r"tune\.gpus_per_trial: 1\.5 GPUs over train\.num_workers: 1 "
                                                 r"gives 1\.5 per worker"),
    ({"use_gpu": True}, {"gpus_per_trial": 0.00001}, r"tune\.gpus_per_trial: .*below Ray's resolution"),
    ({}, {"cpus_per_trial": -1}, r"tune\.cpus_per_trial: must be >= 0"),
    ({}, {"cpus_per_trial": 1.5}, r"tune\.cpus_per_trial"),
    ({"num_workers": 2}, {"cpus_per_trial": 3}, r"tune\.cpus_per_trial: 3 CPUs do not split evenly over "
                                                r"train\.num_workers: 2"),
    ({}, {"driver_cpus": 0}, r"tune\.driver_cpus: must be >= 0\.0001"),
    ({}, {"driver_cpus": float("inf")}, r"tune\.driver_cpus"),
])
def test_bad_trial_resources_name_the_key(tmp_path: Path, train: dict, tune: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, train=train, **tune)


def test_a_local_search_refuses_too_few_gpus_for_one_trial() -> None:
    # run_search's local instance: local_gpus(train.use_gpu, train.num_workers, found, tune.gpus_per_trial)
    with pytest.raises(ConfigError, match=r"tune\.gpus_per_trial: 2 needs 2 GPU\(s\) for one trial, "
                                          r"this machine has 1"):
        local_gpus(True, 2, 1, gpus_per_trial=2.0)
    assert local_gpus(True, 2, 1, gpus_per_trial=0.5) == 1  # two workers of a quarter GPU each: one GPU is enough


def test_resources_do_not_rename_the_experiment(tmp_path: Path) -> None:
    """A search resumed with other trial resources is the same Tune experiment (restored,
    not started again)."""
    from vireid.tuning.space import experiment_name

    m = {"sha256_total": "abc"}
    base = _config(tmp_path, train={"use_gpu": True})
    assert experiment_name(base, m) == experiment_name(replace(base, tune={"gpus_per_trial": 0.5}), m)
    assert experiment_name(base, m) == experiment_name(replace(base, tune={"cpus_per_trial": 4}), m)
    assert experiment_name(base, m) == experiment_name(replace(base, tune={"driver_cpus": 2.0}), m)
    assert experiment_name(base, m) != experiment_name(replace(base, tune={"seed": 1}), m)
