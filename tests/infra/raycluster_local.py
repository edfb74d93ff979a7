"""A throwaway multi-node Ray cluster on loopback, started with ``ray start`` (test helper).

Every node gets its own free ports, the same short temporary directory (Unix socket paths
must stay under 108 bytes) and a custom resource naming it. Ray 2.60 turns on token
authentication when ``~/.ray/auth_token`` exists (any local ``ray.init()`` writes one), and
then a node started without the token cannot join: the cluster gets its own random token
through ``RAY_AUTH_MODE=token`` / ``RAY_AUTH_TOKEN`` in :attr:`LocalRayCluster.env`, which
every process of it (nodes and drivers) must be started with. :meth:`LocalRayCluster.stop`
ends only the processes of this cluster: those whose command line names its temporary
directory or its GCS address, by process id; never ``ray stop``, which would also end every
other Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


class LocalRayCluster:
    """``ray start --head`` plus ``ray start --address`` worker nodes, all on 127.0.0.1."""

    def __init__(self) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env.pop("RAY_ADDRESS", None)

    def _start(self, args: list[str], resources: dict[str, float], num_cpus: int,
               setup: str = "") -> None:
        """``ray start`` (its daemons outlive it); with ``setup``, a shell script that runs first,
        in a new private mount namespace (``unshare -m``) that the node's processes keep."""
        cmd = [RAY, "start", *args, f"--num-cpus={num_cpus}", "--num-gpus=0",
               "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
               f"--resources={json.dumps(resources)}", "--object-store-memory=100000000",
               f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats"]
        if setup:
            cmd = ["unshare", "--mount", "--propagation", "private", "bash", "-c",
                   f"{setup}\nexec {shlex.join(cmd)}"]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")

    def start_head(self, resources: dict[str, float], num_cpus: int = 1, dashboard: bool = False) -> None:
        """The head node (GCS on ``self.port``); ``dashboard``: with the dashboard and its State
        API on 127.0.0.1 (as on a KubeRay head; Ray Train's cleaner queries it)."""
        # a free dashboard port too: ray start checks 8265 even without the dashboard, and
        # fails when another Ray on this machine holds it
        self._start(["--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}",
                     f"--include-dashboard={str(dashboard).lower()}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={free_port()}"], resources, num_cpus)

    def add_node(self, resources: dict[str, float], num_cpus: int = 1) -> None:
        """A worker node joining the head."""
        self._start([f"--address={self.address}"], resources, num_cpus)

    def add_isolated_node(self, resources: dict[str, float], *, hide: Sequence[Path],
                          keep: Sequence[Path] = (), num_cpus: int = 1) -> str:
        """A worker node that cannot read this machine's ``hide`` folders: it runs in its own
        mount namespace with an empty tmpfs over each of them, and only the ``keep`` folders
        (inside them: the code and its environment, what an image holds) bound back,
        read-only. Its processes start in ``/``. Returns the namespace (``mnt:[<inode>]``)
        its processes share (:meth:`namespace_pids`). Needs root (or user namespaces)."""
        before = set(self.namespace_pids())
        lines = ["set -eu", "cd /", "stash=$(mktemp -d /tmp/vrstash.XXXXXX)"]
        for i, k in enumerate(keep):
            lines += [f"mkdir -p $stash/{i}", f"mount --bind {shlex.quote(str(k))} $stash/{i}"]
        lines += [f"mount -t tmpfs -o size=1g vireid-hidden {shlex.quote(str(h))}" for h in hide]
        for i, k in enumerate(keep):
            q = shlex.quote(str(k))
            lines += [f"mkdir -p {q}", f"mount --bind $stash/{i} {q}", f"mount -o remount,bind,ro {q}",
                      f"umount $stash/{i}"]
        lines.append("rm -rf $stash")
        self._start([f"--address={self.address}"], resources, num_cpus, setup="\n".join(lines))
        new = set(self.namespace_pids()) - before
        if len(new) != 1:
            raise RuntimeError(f"expected the node's processes in one new mount namespace, found {sorted(new)}")
        return new.pop()

    def namespace_pids(self) -> dict[str, list[int]]:
        """This cluster's processes outside this process's mount namespace, by namespace."""
        own = os.readlink("/proc/self/ns/mnt")
        found: dict[str, list[int]] = {}
        for pid in self.pids():
            try:
                ns = os.readlink(f"/proc/{pid}/ns/mnt")
            except OSError:
                continue
            if ns != own:
                found.setdefault(ns, []).append(pid)
        return found

    def kill_namespace(self, namespace: str) -> list[int]:
        """SIGKILL every process of this cluster in ``namespace`` (a node lost at once)."""
        victims = self.namespace_pids().get(namespace, [])
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        psutil.wait_procs([p for p in map(_process, victims) if p is not None], timeout=10)
        return victims

    def wait_for_nodes(self, n: int, timeout: float = 60.0) -> list[dict]:
        """Poll the GCS (from a subprocess, so this process stays unconnected) until ``n``
        nodes are alive; return them."""
        script = (f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
                  "print(json.dumps([n for n in ray.nodes() if n['Alive']], default=str))")
        deadline = time.monotonic() + timeout
        alive: list[dict] = []
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-c", script], env=self.env, capture_output=True,
                                 text=True, timeout=120)
            if out.returncode == 0:
                alive = json.loads(out.stdout.strip().splitlines()[-1])
                if len(alive) >= n:
                    return alive
            time.sleep(1.0)
        raise TimeoutError(f"{len(alive)} of {n} Ray nodes alive after {timeout}s")

    def pids(self) -> list[int]:
        """Processes of this cluster: their command line names its temp dir or GCS address."""
        marks = (str(self.temp_dir), f"127.0.0.1:{self.port}", f"--gcs-address={self.address}")
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(p.info["cmdline"] or [])
            if p.info["pid"] != os.getpid() and any(m in cmdline for m in marks):
                found.append(p.info["pid"])
        return found

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s, this cluster's processes (by pid); remove
        the temp dir. (Some Ray processes never exit on SIGTERM: a longer grace only waits.)"""
        procs = []
        for pid in self.pids():
            try:
                p = psutil.Process(pid)
                p.send_signal(signal.SIGTERM)
                procs.append(p)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=timeout)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
