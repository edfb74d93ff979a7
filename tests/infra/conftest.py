"""Fixtures of the multi-node tests (test_cluster_pipeline, test_cluster_tune): a real
``mlflow server`` and a throwaway loopback Ray cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.raycluster_local import LocalRayCluster
from tests.tracking.test_server import wait_healthy
from vireid.tracking.server import free_port, server_command, server_env, start_server, stop_server


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """An ``mlflow server`` (sqlite, artifacts in a folder) on a free loopback port: every
    node of a loopback cluster reaches it."""
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
    """A loopback Ray cluster with no node yet; every process of it is ended afterwards."""
    c = LocalRayCluster()
    try:
        yield c
    finally:
        c.stop()
        assert c.pids() == [], "processes of the test cluster survived stop()"
