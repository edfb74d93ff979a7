"""Run a local MLflow UI/tracking server over the pipeline's store (``vireid mlflow-ui``).

Binds 127.0.0.1 unless another host is asked for: the server has no authentication, so
exposing it (``--host 0.0.0.0``) is a deliberate choice of the caller. The server runs in its
own process group (:func:`start_server`), so :func:`stop_server` stops its workers too;
:func:`serve` runs it in the foreground until it exits or this process is stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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


def start_server(cmd: Sequence[str], env: Mapping[str, str] | None = None, *,
                 capture: bool = True) -> subprocess.Popen[bytes]:
    """Start the server in its own process group (so :func:`stop_server` stops its workers).

    ``capture``: stdout discarded, stderr piped (for the caller to read when it fails);
    ``False``: both go where this process's go (the server's log on the terminal).
    """
    return subprocess.Popen(list(cmd), env=None if env is None else dict(env),
                            stdout=subprocess.DEVNULL if capture else None,
                            stderr=subprocess.PIPE if capture else None, start_new_session=True)


def serve(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run the server in the foreground (its log on this terminal) until it exits or this
    process gets SIGINT, SIGTERM or SIGHUP; its process group is stopped either way. Returns
    the server's exit code, 0 when stopped by a signal."""
    proc = start_server(cmd, env, capture=False)

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a process started in the background (or by a test runner's worker) inherits
    # SIGINT ignored, and Python then leaves it ignored; Ctrl-C must stop the server regardless.
    # SIGTERM/SIGHUP: a supervisor (or a closed terminal) stopping this process stops the server.
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
