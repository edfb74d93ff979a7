"""The train stage on a real two-node Ray cluster whose nodes do not share a filesystem.

The second node runs in its own mount namespace (``unshare -m``) with an empty tmpfs over
the repository and over every folder pytest made (the project, its data and shards), so,
like a pod of the image, it has the code and its environment but none of the head's files.
``python -m pipelines.train`` joins the cluster by ``train.ray_address``, keeps checkpoints
and the staged shards on a real S3 server (``train.storage: s3://...``) and logs to a real
``mlflow server`` (a local store is refused on several nodes). Mid-run the isolated node's
processes are all killed; a replacement node (another namespace) joins, and the run
resumes from the checkpoint in the bucket.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests._params import REPO
from tests.infra.isolated_nodes import (
    SHARD_CACHE,
    assert_isolated,
    isolation,
    listing,
    skip_unless_root,
    stage_env,
)
from tests.infra.raycluster_local import LocalRayCluster
from tests.infra.s3_server import SeaweedS3, make_bucket
from tests.training.conftest import SYNTH, tiny_config
from vireid.config import config_to_dict, replace
from vireid.data.prepare import prepare
from vireid.data.staging import shard_key
from vireid.data.synthetic import generate_sysu
from vireid.ray_session import ray_storage

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

BUCKET = "vireid-cluster"
EPOCHS = 6


@pytest.fixture
def s3(s3_server: SeaweedS3) -> SeaweedS3:
    """The session's S3 server (tests/conftest.py) with this test's bucket."""
    make_bucket(s3_server, BUCKET)
    return s3_server


@pytest.mark.timeout(1500)
def test_train_stage_across_nodes_without_a_shared_filesystem_resumes_from_s3(
        s3: SeaweedS3, mlflow_server: str, cluster: LocalRayCluster, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    skip_unless_root()
    _, fs = ray_storage(f"s3://{BUCKET}", s3.environ())  # the library's S3 filesystem, to look in the bucket
    project = tmp_path / "project"
    root = generate_sysu(project / "data" / "raw" / "SYSU-MM01", SYNTH)
    cfg = tiny_config(root, epochs=EPOCHS, iters_per_epoch=4, num_workers=2, cpus_per_worker=1,
                      max_failures=2, checkpoint_every=1, validate_every=EPOCHS)
    shards = prepare(cfg.data, project / "data" / "shards")
    cfg = replace(cfg, train={"ray_address": cluster.address, "storage": f"s3://{BUCKET}/team"},
                  track={"tracking_uri": mlflow_server})
    (project / "params.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)), encoding="utf-8")

    # what the isolated nodes cannot see: the repository (but its code and environment, as in
    # the image), everything pytest made, the head's node-local shard cache and Ray session
    hide, keep = isolation(cluster, tmp_path_factory)
    cluster.start_head({"node_head": 1}, dashboard=True)
    first = cluster.add_isolated_node({"node_worker": 1}, hide=hide, keep=keep)
    cluster.wait_for_nodes(2)
    assert_isolated(cluster, [project / "params.yaml", shards / "manifest.json", REPO / "params.yaml"])

    env = stage_env(cluster, s3)
    # a store in the head's files is refused once the cluster has two nodes: workers log to it
    local = replace(cfg, track={"tracking_uri": ""})  # "": the project's local sqlite store
    (project / "local.yaml").write_text(yaml.safe_dump(config_to_dict(local)), encoding="utf-8")
    refused = subprocess.run([sys.executable, "-m", "pipelines.train", "--params", "local.yaml",
                              "--shards", "data/shards", "--out", "outputs/refused"],
                             cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "is a store on this machine, but the Ray cluster of train.ray_address has 2 nodes" in refused.stderr
    assert not (project / "outputs" / "refused" / "model.pt").exists()

    log = tmp_path / "train.log"
    key = shard_key(shards)
    try:
        with log.open("wb") as out:
            driver = subprocess.Popen([sys.executable, "-m", "pipelines.train", "--params", "params.yaml",
                                       "--shards", "data/shards", "--out", "outputs/train"],
                                      cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
            # a committed checkpoint in the bucket, then the isolated node is lost at once. A
            # checkpoint's files are uploaded before Ray Train commits it (a node lost in between
            # restarts the run from scratch, correctly); rank 0 starts the next epoch only once
            # its checkpoint is committed, so the second one's upload means the first is committed
            deadline = time.monotonic() + 600
            while sum(p.endswith("train_state.pt") for p in listing(fs, f"{BUCKET}/team/train")) < 2:
                assert driver.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.5)
            killed = cluster.kill_namespace(first)
            assert killed and first not in cluster.namespace_pids()
            second = cluster.add_isolated_node({"node_worker": 1}, hide=hide, keep=keep)
            assert second != first
            rc = driver.wait(timeout=900)
        output = log.read_text(errors="replace")
        assert rc == 0, output[-5000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        shutil.rmtree(SHARD_CACHE / key, ignore_errors=True)  # the head node's copy

    summary = json.loads((project / "outputs" / "train" / "train_summary.json").read_text())
    attempts = [h["attempt"] for h in summary["history"]]
    assert summary["epochs_completed"] == EPOCHS and len(attempts) == EPOCHS, attempts
    assert attempts[0] == 0 and attempts[-1] >= 1 and attempts == sorted(attempts), attempts  # resumed, not restarted
    assert "resumed after epoch" in output
    assert "Failed to query Ray Train Controller actor state" not in output  # the head's State API answers
    assert summary["checkpoint_path"].startswith(f"{BUCKET}/team/train/train-"), summary["checkpoint_path"]
    # the workers read the shards staged in the bucket, each node copying them to its own cache
    staged = listing(fs, f"{BUCKET}/team/shards/{key}")
    assert f"{BUCKET}/team/shards/{key}/manifest.json" in staged
    copies = {line.split("pid=", 1)[1].split(")", 1)[0] for line in output.splitlines()
              if "copied shards" in line and "pid=" in line}
    assert len(copies) == 3, output[-5000:]  # head once (its restarted worker reuses the copy), both nodes
    assert (project / "outputs" / "train" / "model.pt").is_file()
    # every epoch reached the MLflow server from rank 0, wherever it ran
    from mlflow.tracking import MlflowClient

    run = json.loads((project / "outputs" / "train" / "mlflow_run.json").read_text())
    assert run["tracking_uri"] == mlflow_server
    epochs = MlflowClient(mlflow_server).get_metric_history(run["run_id"], "epoch/loss")
    assert sorted({m.step for m in epochs}) == list(range(1, EPOCHS + 1))
