"""Helpers of the tests whose second Ray node shares no files with the head
(test_cluster_pipeline, test_cluster_tune): what such a node hides and keeps, a probe that
it indeed sees none of the head's files, the environment of a stage run against the
cluster, and a listing of the S3 bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.fs
import pytest

from tests._params import REPO
from tests.infra.raycluster_local import LocalRayCluster
from tests.infra.s3_server import SeaweedS3

#: the node-local cache where a worker copies the staged shards (vireid.data.staging)
SHARD_CACHE = Path(tempfile.gettempdir()) / "vireid-shards"

PROBE = """
import json, os, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")

@ray.remote(num_cpus=0, resources={"node_worker": 0.01})
def look(paths):
    import vireid
    return {"exists": {p: os.path.exists(p) for p in paths}, "vireid": vireid.__file__, "cwd": os.getcwd()}

print("PROBE " + json.dumps(ray.get(look.remote(sys.argv[2:]))), flush=True)
"""


def skip_unless_root() -> None:
    """A node in its own mount namespace (``unshare -m``) needs root here."""
    if os.geteuid() != 0:
        pytest.skip("a node in its own mount namespace (unshare -m) needs root here")


def isolation(cluster: LocalRayCluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """``(hide, keep)`` for :meth:`LocalRayCluster.add_isolated_node`: what the isolated nodes
    cannot see (the repository, everything pytest made, the head's node-local shard cache and
    Ray session) but the code and its environment, as in the image."""
    SHARD_CACHE.mkdir(exist_ok=True)
    hide = [REPO, tmp_path_factory.getbasetemp(), SHARD_CACHE, cluster.temp_dir]
    keep = [REPO / "vireid"] + ([Path(sys.prefix)] if Path(sys.prefix).is_relative_to(REPO) else [])
    return hide, keep


def assert_isolated(cluster: LocalRayCluster, hidden: list[Path]) -> None:
    """A task on the node with resource ``node_worker`` sees none of ``hidden``, imports
    vireid from the repository's code and runs in ``/``."""
    probe = subprocess.run([sys.executable, "-c", PROBE, cluster.address, *map(str, hidden)],
                           env=cluster.env, capture_output=True, text=True, timeout=300, cwd="/")
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.split("PROBE ", 1)[1])
    assert not any(seen["exists"][str(p)] for p in hidden), seen
    assert seen["vireid"].startswith(str(REPO / "vireid")) and seen["cwd"] == "/", seen


def stage_env(cluster: LocalRayCluster, s3: SeaweedS3) -> dict[str, str]:
    """The environment of a ``python -m pipelines.<stage>`` run against the cluster: its token,
    the S3 credentials, the repository on the path."""
    return {**cluster.env, **s3.environ(), "PYTHONPATH": str(REPO), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            "MLFLOW_DISABLE_TELEMETRY": "true"}


def listing(fs: pyarrow.fs.FileSystem, prefix: str) -> list[str]:
    """Every object under ``prefix`` (bucket/key...), or [] when there is none."""
    try:
        return [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(prefix, recursive=True))]
    except (FileNotFoundError, OSError):
        return []
