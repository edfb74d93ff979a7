"""The train stage as users run it (``python -m pipelines.train``): its own local Ray, the
checkpoints under ``train.storage``, and a log without Ray Train's state-API noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests._params import REPO
from tests.training.conftest import tiny_config
from vireid.config import config_to_dict

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

NOISE = "Failed to query Ray Train Controller actor state"


def test_short_train_stage_log_is_clean_and_checkpoints_go_to_train_storage(tiny_shards, tmp_path: Path) -> None:
    shards, cfg = tiny_shards
    plain = config_to_dict(tiny_config(Path(cfg.data.root), epochs=2, iters_per_epoch=2, validate_every=2))
    plain["train"]["storage"] = "runs"  # relative: below the project folder (the working directory)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(plain), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "pipelines.train", "--params", str(params),
                           "--shards", str(shards), "--out", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "trained 2 epochs" in proc.stdout
    assert NOISE not in output, [ln for ln in output.splitlines() if NOISE in ln][:3]
    runs = list((tmp_path / "runs" / "train").glob("train-*"))
    assert len(runs) == 1 and list(runs[0].glob("checkpoint_*")), sorted(tmp_path.rglob("*"))[:20]
    assert (tmp_path / "out" / "model.pt").is_file()
