"""A new local Ray instance offers the machine's GPUs, and refuses more GPU workers than GPUs
(train.use_gpu, train.num_workers); joining a cluster (train.ray_address) is not checked here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vireid.config import Config, ConfigError
from vireid.data.errors import DatasetError
from vireid.ray_session import local_gpus


@pytest.mark.parametrize(("use_gpu", "workers", "found", "expected"), [
    (False, 1, 0, 0), (False, 4, 8, 0),  # CPU training claims no GPU, whatever the machine has
    (True, 1, 1, 1), (True, 2, 8, 8),  # the machine's count, not the number of workers
    (True, 4, 4, 4)])
def test_local_gpus_is_the_machines_count(use_gpu: bool, workers: int, found: int, expected: int) -> None:
    assert local_gpus(use_gpu, workers, found) == expected


@pytest.mark.parametrize(("workers", "found"), [(2, 1), (1, 0), (8, 4)])
def test_fewer_gpus_than_workers_is_one_line_naming_the_keys(workers: int, found: int) -> None:
    from vireid.errors import error_line

    with pytest.raises(ConfigError) as info:
        local_gpus(True, workers, found)
    line = error_line(info.value)
    assert line is not None and "\n" not in line
    assert line.startswith("error: train.use_gpu: true with train.num_workers: ")
    assert f"train.num_workers: {workers} needs {workers} GPUs" in line and f"this machine has {found};" in line


def _gpu_cfg(workers: int, address: str = "") -> Config:
    cfg = Config()
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, use_gpu=True, num_workers=workers,
                                                              ray_address=address))


def test_train_and_tune_refuse_before_starting_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    from vireid.training import ray_train
    from vireid.tuning import run

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(run, "_cuda_devices", lambda: 1)
    missing = tmp_path / "no-shards"  # refused before the shards are read or Ray starts
    with pytest.raises(ConfigError, match=r"train\.num_workers: 2 needs 2 GPUs .* this machine has 1;"):
        ray_train.fit(_gpu_cfg(2), missing, tmp_path / "out", tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"train\.num_workers: 2 needs 2 GPUs .* this machine has 1;"):
        run.run_search(_gpu_cfg(2), missing, tmp_path / "runs", tmp_path / "out")
    # joining a cluster: its nodes say what they have (the shards are the next thing read)
    with pytest.raises(DatasetError, match="no shard manifest"):
        ray_train.fit(_gpu_cfg(2, "auto"), missing, tmp_path / "out", tmp_path / "runs")
