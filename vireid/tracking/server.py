"""A local MLflow UI/tracking server over the pipeline's store (``vireid mlflow-ui``).

Binds 127.0.0.1 unless another host is asked for: the server has no authentication, so
exposing it (``--host 0.0.0.0``) is a deliberate choice of the caller.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000


def server_command(backend_store_uri: str, *, artifacts_destination: str | None = None,
                   host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, workers: int = 1) -> list[str]:
    """``python -m mlflow server`` argv for ``backend_store_uri`` (runs and registry)."""
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(int(port)),
           "--workers", str(int(workers)), "--backend-store-uri", backend_store_uri]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination]
    return cmd


def server_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (the caller's environment) for the server process: telemetry off and MLflow's
    background job runner off (it spawns several worker processes serving GenAI features
    that a pipeline UI does not use, and slows the start a lot on small machines)."""
    return {**base, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_server(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start the server in its own process group (so :func:`stop_server` stops its workers)."""
    return subprocess.Popen(list(cmd), env=None if env is None else dict(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    """Poll ``url`` (``http://127.0.0.1:PORT/health``) until it answers 200; raise
    RuntimeError with the server's stderr when it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}: {err}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"mlflow server did not answer {url} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``timeout``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        except ProcessLookupError:
            pass
    if proc.stderr:
        proc.stderr.close()
