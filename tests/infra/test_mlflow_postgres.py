"""A real MLflow tracking server on a real PostgreSQL: runs, registry and aliases round-trip.

PostgreSQL is initialised in a temporary directory and started on a free loopback port (as
the ``postgres`` user when the tests run as root: the server refuses to run as root); the
binaries come from ``tests/infra/setup_postgres.sh``, which installs them when missing (as
root, with apt). Without root and without them the tests skip, saying so.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from tests.infra.raycluster_local import free_port

pytestmark = pytest.mark.slow

SETUP = Path(__file__).with_name("setup_postgres.sh")


@dataclass
class Postgres:
    """A running PostgreSQL: its connection parameters."""

    port: int
    user: str
    password: str

    def uri(self, db: str) -> str:
        """SQLAlchemy URI; the driver is named: SQLAlchemy 2.1 defaults postgresql:// to
        psycopg 3, and the locked environment has psycopg2."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"


NEEDS_ROOT = "needs root to apt-get install postgresql; run as root or install postgresql"


def _installed_bindir() -> Path | None:
    """The bin directory of an installed PostgreSQL server (``setup_postgres.sh --find``:
    looks only), or None."""
    out = subprocess.run(["bash", str(SETUP), "--find"], capture_output=True, text=True, timeout=60,
                         check=True)
    found = out.stdout.strip()
    return Path(found) if found else None


def _bindir() -> Path:
    """The PostgreSQL server binaries: installed ones, else installed now (as root, with apt);
    without root and without them, the test is skipped (nothing to install them with)."""
    if os.geteuid() != 0 and _installed_bindir() is None:
        pytest.skip(NEEDS_ROOT)
    out = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        pytest.fail(f"PostgreSQL binaries unavailable: {out.stderr.strip()}")
    return Path(out.stdout.strip().splitlines()[-1])


def test_without_root_or_postgres_the_test_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sys.modules[__name__], "_installed_bindir", lambda: None)
    with pytest.raises(pytest.skip.Exception, match="^needs root to apt-get install postgresql; "
                                                    "run as root or install postgresql$"):
        _bindir()


def test_find_names_the_binaries_the_setup_script_provides() -> None:
    """``--find`` (which only looks) and the setup script agree on the bin directory."""
    bindir = _bindir()  # installs first when needed (as root), or skips as the server test does
    assert _installed_bindir() == bindir
    assert all(os.access(bindir / b, os.X_OK) for b in ("initdb", "pg_ctl", "postgres"))


def _as_owner(cmd: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *cmd] if owner else cmd


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bindir = _bindir()
    owner = "postgres" if os.geteuid() == 0 else None  # postgres refuses to run as root
    base = Path(tempfile.mkdtemp(prefix="vireid-pg-", dir="/tmp"))  # /tmp: readable by owner
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    pg = Postgres(port=free_port(), user="vireid", password=secrets.token_hex(12))
    pwfile = base / "pw"
    pwfile.write_text(pg.password + "\n")
    if owner:
        uid, gid = pwd.getpwnam(owner).pw_uid, pwd.getpwnam(owner).pw_gid
        for p in (base, sock, pwfile):
            os.chown(p, uid, gid)
    started = False
    try:
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", pg.user,
                                  f"--pwfile={pwfile}", "--auth-local=trust",
                                  "--auth-host=scram-sha-256", "-E", "UTF8"], owner),
                       check=True, capture_output=True, timeout=300)
        opts = f"-p {pg.port} -k {sock} -c listen_addresses=127.0.0.1"
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts,
                                  "-l", str(base / "server.log"), "-w", "-t", "120", "start"], owner),
                       check=True, capture_output=True, timeout=180)
        started = True
        conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user=pg.user,
                                password=pg.password, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield pg
    finally:
        if started:
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                      "-w", "stop"], owner), capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    port = free_port()
    log = (tmp_path_factory.mktemp("mlflow-log") / "server.log").open("w")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server",
           "--backend-store-uri", postgres.uri("mlflow"),
           "--artifacts-destination", artifacts.as_uri(),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not come up:\n{Path(log.name).read_text()[-3000:]}")
            time.sleep(1.0)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the session we started: server + its workers
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


@pytest.mark.timeout(600)
def test_run_registry_and_alias_round_trip(mlflow_server: str, postgres: Postgres, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    exp_id = client.create_experiment("vireid-infra-test")
    run = client.create_run(exp_id, run_name="pg-roundtrip")
    run_id = run.info.run_id
    client.log_param(run_id, "memory_size", "8")
    for step, value in enumerate([0.1, 0.25, 0.4]):
        client.log_metric(run_id, "val_mAP", value, step=step)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text("not really weights\n")
    client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    client.set_terminated(run_id)

    client.create_registered_model("vireid-infra-test")
    version = client.create_model_version("vireid-infra-test", source=f"runs:/{run_id}/model",
                                          run_id=run_id)
    client.set_registered_model_alias("vireid-infra-test", "champion", version.version)

    # read back through the server
    got = client.get_run(run_id)
    assert got.data.params["memory_size"] == "8"
    assert got.data.metrics["val_mAP"] == pytest.approx(0.4)
    history = client.get_metric_history(run_id, "val_mAP")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([0.1, 0.25, 0.4])
    assert [f.path for f in client.list_artifacts(run_id, "model")] == ["model/weights.txt"]
    champion = client.get_model_version_by_alias("vireid-infra-test", "champion")
    assert champion.version == version.version and champion.run_id == run_id

    # and it is PostgreSQL that holds them
    conn = psycopg2.connect(host="127.0.0.1", port=postgres.port, user=postgres.user,
                            password=postgres.password, dbname="mlflow")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT value FROM params WHERE run_uuid = %s AND key = 'memory_size'", (run_id,))
            assert cur.fetchone() == ("8",)
            cur.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
                        ("vireid-infra-test", "champion"))
            assert cur.fetchone() == (int(version.version),)
    finally:
        conn.close()
