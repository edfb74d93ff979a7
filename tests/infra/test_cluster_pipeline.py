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
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs
import pytest
import yaml

from tests._params import REPO
from tests.infra.raycluster_local import LocalRayCluster
from tests.infra.s3_server import SeaweedS3, make_bucket
from tests.tracking.test_server import wait_healthy
from tests.training.conftest import SYNTH, tiny_config
from vireid.config import config_to_dict, replace
from vireid.data.prepare import prepare
from vireid.data.staging import shard_key
from vireid.data.synthetic import generate_sysu
from vireid.ray_session import ray_storage
from vireid.tracking.server import free_port, server_command, server_env, start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

BUCKET = "vireid-cluster"
EPOCHS = 6

PROBE = """
import json, os, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")

@ray.remote(num_cpus=0, resources={"node_worker": 0.01})
def look(paths):
    import vireid
    return {"exists": {p: os.path.exists(p) for p in paths}, "vireid": vireid.__file__, "cwd": os.getcwd()}

print("PROBE " + json.dumps(ray.get(look.remote(sys.argv[2:]))), flush=True)
"""


@pytest.fixture
def s3(s3_server: SeaweedS3) -> SeaweedS3:
    """The session's S3 server (tests/conftest.py) with this test's bucket."""
    make_bucket(s3_server, BUCKET)
    return s3_server


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    (tmp_path / "mlflow").mkdir()
    proc = start_server(server_command(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", port=port,
                                       artifacts_destination=str(tmp_path / "mlflow" / "artifacts")),
                        env=server_env(os.environ))
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, timeout=240)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


@pytest.fixture
def cluster() -> Iterator[LocalRayCluster]:
    c = LocalRayCluster()
    try:
        yield c
    finally:
        c.stop()
        assert c.pids() == [], "processes of the test cluster survived stop()"


def _listing(fs: pyarrow.fs.S3FileSystem, prefix: str) -> list[str]:
    try:
        return [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(prefix, recursive=True))]
    except (FileNotFoundError, OSError):
        return []


@pytest.mark.timeout(1500)
def test_train_stage_across_nodes_without_a_shared_filesystem_resumes_from_s3(
        s3: SeaweedS3, mlflow_server: str, cluster: LocalRayCluster, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    if os.geteuid() != 0:
        pytest.skip("a node in its own mount namespace (unshare -m) needs root here")
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
    cache = Path(tempfile.gettempdir()) / "vireid-shards"
    cache.mkdir(exist_ok=True)
    hide = [REPO, tmp_path_factory.getbasetemp(), cache, cluster.temp_dir]
    keep = [REPO / "vireid"] + ([Path(sys.prefix)] if Path(sys.prefix).is_relative_to(REPO) else [])
    cluster.start_head({"node_head": 1}, dashboard=True)
    first = cluster.add_isolated_node({"node_worker": 1}, hide=hide, keep=keep)
    cluster.wait_for_nodes(2)

    probe = subprocess.run([sys.executable, "-c", PROBE, cluster.address, str(project / "params.yaml"),
                            str(shards / "manifest.json"), str(REPO / "params.yaml"), str(cache)],
                           env=cluster.env, capture_output=True, text=True, timeout=300, cwd="/")
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.split("PROBE ", 1)[1])
    assert not any(seen["exists"][p] for p in (str(project / "params.yaml"), str(shards / "manifest.json"),
                                               str(REPO / "params.yaml"))), seen
    assert seen["vireid"].startswith(str(REPO / "vireid")) and seen["cwd"] == "/", seen

    env = {**cluster.env, **s3.environ(), "PYTHONPATH": str(REPO), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
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
            while sum(p.endswith("train_state.pt") for p in _listing(fs, f"{BUCKET}/team/train")) < 2:
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
        shutil.rmtree(cache / key, ignore_errors=True)  # the head node's copy

    summary = json.loads((project / "outputs" / "train" / "train_summary.json").read_text())
    attempts = [h["attempt"] for h in summary["history"]]
    assert summary["epochs_completed"] == EPOCHS and len(attempts) == EPOCHS, attempts
    assert attempts[0] == 0 and attempts[-1] >= 1 and attempts == sorted(attempts), attempts  # resumed, not restarted
    assert "resumed after epoch" in output
    assert "Failed to query Ray Train Controller actor state" not in output  # the head's State API answers
    assert summary["checkpoint_path"].startswith(f"{BUCKET}/team/train/train-"), summary["checkpoint_path"]
    # the workers read the shards staged in the bucket, each node copying them to its own cache
    staged = _listing(fs, f"{BUCKET}/team/shards/{key}")
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
