"""A real two-node Ray cluster on loopback runs a 2-worker Ray Train job across both nodes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.raycluster_local import LocalRayCluster

# xdist_group: under `make test` (pytest -n 2 --dist loadgroup) the modules that start Ray run
# one after another on one worker: never two Ray instances at once, the other core runs the rest.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def _start_two_nodes() -> LocalRayCluster:
    """Head + one worker node. Ray gives a raylet a fixed 30 s to register, which a heavily
    loaded machine can miss: one more try from scratch before giving up."""
    for attempt in (1, 2):
        cluster = LocalRayCluster()
        try:
            cluster.start_head({"node_head": 1})
            cluster.add_node({"node_worker": 1})
            cluster.wait_for_nodes(2)
            return cluster
        except (RuntimeError, TimeoutError):
            cluster.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def two_nodes() -> Iterator[LocalRayCluster]:
    cluster = _start_two_nodes()
    try:
        yield cluster
    finally:
        cluster.stop()
        assert cluster.pids() == [], "processes of the test cluster survived stop()"


@pytest.mark.timeout(600)
def test_train_workers_land_on_both_nodes(two_nodes: LocalRayCluster, tmp_path: Path) -> None:
    driver = Path(__file__).with_name("_two_node_driver.py")
    proc = subprocess.run([sys.executable, str(driver), two_nodes.address, str(tmp_path / "ray"),
                           str(tmp_path)],
                          env=two_nodes.env, capture_output=True, text=True, timeout=360,
                          cwd=Path(__file__).resolve().parents[2])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    result = json.loads(re.search(r"^RESULT (.*)$", proc.stdout, re.M).group(1))
    assert result["error"] is None
    workers = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("worker-*.json"))]
    by_rank = {w["rank"]: w for w in workers}
    assert sorted(by_rank) == [0, 1], out[-4000:]
    assert all(w["allreduce"] == 3.0 and w["world"] == 2 for w in workers)  # 1 + 2 summed across the nodes
    node_of = {n["id"]: ("head" if "node_head" in n["resources"] else "worker")
               for n in result["nodes"]}
    assert sorted(node_of.values()) == ["head", "worker"]
    assert {node_of[w["node_id"]] for w in workers} == {"head", "worker"}
