"""Checkpoints on object storage, for real: ``train.storage: s3://...`` against a SeaweedFS
S3 server started here. A run whose worker dies in epoch 2 (no retries) leaves epoch 1's
checkpoint in the bucket and nothing usable on the local disk; the rerun continues from the
bucket's checkpoint and trains epoch 2 only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.infra.s3_server import SeaweedS3, make_bucket
from tests.training.conftest import tiny_config
from vireid.config import replace
from vireid.ray_session import ray_storage

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

BUCKET = "vireid-checkpoints"


def test_s3_location_becomes_a_path_on_an_s3_filesystem_from_the_standard_variables() -> None:
    import pyarrow.fs

    path, fs = ray_storage("s3://bucket/team/runs/", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                                                      "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                                                      "AWS_REGION": "eu-west-1"})
    assert path == "bucket/team/runs" and isinstance(fs, pyarrow.fs.S3FileSystem)
    assert fs.region == "eu-west-1"
    assert ray_storage("/abs/ray_results/train", {}) == ("/abs/ray_results/train", None)
    assert ray_storage("gs://b/p", {}) == ("gs://b/p", None)  # Ray resolves gs:// itself


@pytest.fixture(scope="module")
def s3(s3_server: SeaweedS3) -> SeaweedS3:
    """The session's S3 server (tests/conftest.py) with this module's bucket."""
    make_bucket(s3_server, BUCKET)
    return s3_server


def _reports(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_training_resumes_from_the_checkpoint_in_the_bucket(s3: SeaweedS3, local_ray: None, tiny_shards,
                                                             tmp_path: Path) -> None:
    import pyarrow.fs

    from vireid.training.ray_train import ReportLog, fit

    shards, cfg = tiny_shards
    cfg = replace(tiny_config(Path(cfg.data.root), epochs=2), train={"max_failures": 0})
    storage, fs = ray_storage(f"s3://{BUCKET}/team/ray_results/train", s3.environ())
    log1, marker = tmp_path / "run1.jsonl", tmp_path / "killed.marker"
    with pytest.raises(Exception, match="(?i)fail|worker|died|exit"):
        fit(cfg, shards, tmp_path / "out", storage, storage_filesystem=fs, name="s3run",
            callbacks=[ReportLog(log1)], fault={"epoch": 2, "rank": 0, "marker": str(marker)})
    assert marker.exists() and [r["epoch"] for r in _reports(log1)] == [1]
    in_bucket = [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(f"{storage}/s3run", recursive=True))]
    assert any(p.endswith("train_state.pt") and "/checkpoint_" in p for p in in_bucket), in_bucket
    assert not (tmp_path / "out" / "model.pt").exists()
    # the rerun finds the run in the bucket and trains epoch 2 only
    log2 = tmp_path / "run2.jsonl"
    summary = fit(cfg, shards, tmp_path / "out", storage, storage_filesystem=fs, name="s3run",
                  callbacks=[ReportLog(log2)])
    assert [r["epoch"] for r in _reports(log2)] == [2]
    assert [h["attempt"] for h in summary["history"]] == [0, 1]
    assert summary["checkpoint_path"].startswith(f"{storage}/s3run/")
    assert (tmp_path / "out" / "model.pt").is_file()
