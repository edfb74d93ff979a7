"""``vireid mlflow-ui``: binds 127.0.0.1 by default; the server starts and answers /health."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from vireid.cli import build_parser
from vireid.tracking.server import (
    free_port,
    server_command,
    server_env,
    start_server,
    stop_server,
)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail with the server's stderr when it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            pytest.fail(f"mlflow server exited with code {proc.returncode}: {err}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    pytest.fail(f"mlflow server did not answer {url} within {timeout:.0f} s")


def test_command_binds_localhost_by_default() -> None:
    cmd = server_command("sqlite:////tmp/x/mlflow.db")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == "sqlite:////tmp/x/mlflow.db"
    assert build_parser().parse_args(["mlflow-ui"]).host == "127.0.0.1"
    assert build_parser().parse_args(["mlflow-ui", "--host", "0.0.0.0"]).host == "0.0.0.0"
    other = server_command("sqlite:////tmp/x/mlflow.db", host="0.0.0.0", port=8080)
    assert other[other.index("--host") + 1] == "0.0.0.0" and other[other.index("--port") + 1] == "8080"


@pytest.mark.slow
def test_server_starts_on_localhost_and_stops(target) -> None:
    port = free_port()
    proc = start_server(server_command(target.tracking_uri, port=port), env=server_env(os.environ))
    try:
        # ~10 s on an idle 2-core machine; the bound leaves room for a loaded one
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, timeout=120)
    finally:
        stop_server(proc)
    assert proc.returncode is not None
