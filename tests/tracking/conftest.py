"""Shared fixtures: one temporary sqlite store per session (creating its tables takes
seconds), a tiny real ``VIReIDModel`` and its checkpoint metadata."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

for _key, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DVC_NO_ANALYTICS", "1"),
                     ("RAY_USAGE_STATS_ENABLED", "0")):
    os.environ.setdefault(_key, _value)

from vireid.config import Config, ModelConfig, TrackConfig, config_to_dict  # noqa: E402
from vireid.tracking.store import TrackingTarget, resolve_target  # noqa: E402

IMAGE_H, IMAGE_W = 64, 32
NUM_CLASSES = 4


@pytest.fixture(scope="session", autouse=True)
def _no_default_store(tmp_path_factory: pytest.TempPathFactory):
    """Point MLflow's process default at a sentinel and fail if anything used it: every
    call must go to the store it was handed (MLflow 3's default is ./mlflow.db)."""
    sentinel = tmp_path_factory.mktemp("default") / "must-not-be-used.db"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{sentinel}"
    yield
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved
    assert not sentinel.exists(), "a tracking call went to MLflow's default store"


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> TrackingTarget:
    """The local store of a temporary 'repository'."""
    repo = tmp_path_factory.mktemp("repo")
    return resolve_target(TrackConfig(experiment="vireid-test"), repo)


@pytest.fixture(scope="session")
def config() -> Config:
    return Config(model=ModelConfig(arch="tiny", pretrained=False, memory_size=2))


@pytest.fixture(scope="session")
def tiny_model(config: Config) -> torch.nn.Module:
    """A tiny VIReIDModel in eval mode whose BatchNorm statistics are not the defaults."""
    from vireid.modeling import VIReIDModel

    torch.manual_seed(0)
    model = VIReIDModel(config.model, num_classes=NUM_CLASSES)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, IMAGE_H, IMAGE_W) * 2 + 0.5, torch.tensor([0, 1] * 4))
    return model.eval()


@pytest.fixture(scope="session")
def meta(config: Config, tiny_model: torch.nn.Module) -> dict[str, Any]:
    from vireid.training.checkpoint import make_meta

    return make_meta(arch="tiny", num_classes=NUM_CLASSES, feat_dim=tiny_model.feat_dim,
                     dataset="sysu", regdb_trial=None, image_height=IMAGE_H, image_width=IMAGE_W,
                     identity_map={"identities": list(range(NUM_CLASSES))},
                     config=config_to_dict(config), selected_epoch=1, selection="test")


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory, tiny_model: torch.nn.Module,
               meta: dict[str, Any]) -> Path:
    from vireid.training.checkpoint import save_model

    return save_model(tmp_path_factory.mktemp("train") / "model.pt", tiny_model.state_dict(), meta)


@pytest.fixture(scope="session")
def logged(target: TrackingTarget, config: Config, tiny_model: torch.nn.Module,
           meta: dict[str, Any]) -> tuple[str, str]:
    """``(run_id, model_uri)`` of the tiny model logged once to a pipeline run."""
    from vireid.tracking import log_embedder, start_pipeline_run

    run_id = start_pipeline_run(target, config=config_to_dict(config), git_commit="abc123",
                                data_hash="d" * 64, dataset="sysu", protocol="sysu/all/single@community")
    return run_id, log_embedder(target.tracking_uri, run_id, tiny_model, meta)
