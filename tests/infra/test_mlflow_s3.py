"""The pipeline against a real ``mlflow server`` whose artifacts live on a real S3 server.

SeaweedFS (``tests/infra/s3_server.py``) holds the bucket; ``mlflow server`` (sqlite backend,
``--artifacts-destination s3://...``, serving the artifacts itself) is the only process given
the S3 endpoint and keys: the clients (this process and the stages) get the tracking URI only.

A tiny model is trained without Ray (the Trainer the Ray workers run, one epoch) and its
pipeline run is started on the server as the train stage starts it (``start_pipeline_run``,
``run_record``). Then the real ``evaluate`` and ``register`` stages run under a real
``dvc repro`` (their ``dvc.yaml`` entries, less the code dependencies), so ``dvc.lock`` is
DVC's own, and ``vireid publish`` / ``vireid restore`` move the pipeline state through the
server. Starting Ray would add minutes and test nothing these stages do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tests._params import REPO
from tests.infra.s3_server import SeaweedS3, list_objects, make_bucket
from tests.tracking.test_server import wait_healthy
from tests.training.conftest import SYNTH, tiny_config
from vireid.config import config_to_dict

# no Ray: runs beside the Ray tests under `make test` (each SeaweedFS server has its own ports)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

BUCKET, PREFIX = "mlflow", "artifacts"
MODEL_NAME = "vireid-s3"
#: what only the server may know: the clients reach the artifacts through it
SERVER_ONLY = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
               "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
               "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
PUBLISHED = ("dvc.lock", "params.yaml", "outputs/eval/metrics.json", "outputs/register/registration.json")


@dataclass
class Server:
    url: str
    s3: SeaweedS3

    def objects(self, artifact_uri: str) -> dict[str, bytes]:
        """The bucket's objects under an ``mlflow-artifacts:/...`` URI, keyed relative to it."""
        assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri
        prefix = f"{PREFIX}/{artifact_uri[len('mlflow-artifacts:/'):].strip('/')}/"
        return {k[len(prefix):]: v for k, v in list_objects(self.s3, BUCKET, prefix).items()}


@dataclass
class Project:
    root: Path
    run_id: str


@pytest.fixture(scope="module")
def client_env() -> Iterator[None]:
    """This process (an MLflow client) without S3 settings or a default tracking store."""
    with pytest.MonkeyPatch.context() as mp:
        for key in SERVER_ONLY:
            mp.delenv(key, raising=False)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        yield


@pytest.fixture(scope="module")
def server(client_env: None, s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from vireid.tracking.server import (
        free_port,
        server_command,
        server_env,
        start_server,
        stop_server,
    )

    base = tmp_path_factory.mktemp("mlflow-s3")
    s3 = s3_server  # the session's (tests/conftest.py), with this module's bucket
    make_bucket(s3, BUCKET)
    port = free_port()
    cmd = server_command(f"sqlite:///{base / 'mlflow.db'}", artifacts_destination=f"s3://{BUCKET}/{PREFIX}",
                         port=port)
    assert "--no-serve-artifacts" not in cmd  # MLflow 3 serves (proxies) artifacts by default
    env = server_env({**os.environ, **s3.environ(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint})
    proc = start_server(cmd, env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health", proc, timeout=240)
        yield Server(url, s3)
    finally:
        stop_server(proc)


def _dvc_yaml(stages: tuple[str, ...]) -> dict:
    """The repository's ``dvc.yaml`` entries of ``stages``, less the code dependencies (the
    project folder has no copy of the code; the stages import it from the repository)."""
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    out = {}
    for name in stages:
        stage = dict(doc["stages"][name])
        stage["deps"] = [d for d in stage["deps"] if not d.startswith(("pipelines/", "vireid/"))]
        out[name] = stage
    return {"stages": out}


def stage_env() -> dict[str, str]:
    """The environment of ``dvc repro`` and its stages: this one (no S3 settings), the
    repository importable, this interpreter first on PATH (``python -m pipelines.<stage>``)."""
    env = {k: v for k, v in os.environ.items() if k not in SERVER_ONLY}
    env.update(PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    return env


def run(cmd: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=stage_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def project(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A DVC project after ``dvc repro register``: a tiny model trained one epoch, its
    pipeline run on the server, then the real evaluate and register stages."""
    from vireid.data.prepare import prepare
    from vireid.data.synthetic import generate_sysu
    from vireid.io import atomic_write_json
    from vireid.stages.entry import load_config
    from vireid.tracking import end_run, git_commit, resolve_target, run_record, start_pipeline_run
    from vireid.training.loop import Trainer

    base = tmp_path_factory.mktemp("pipeline")
    root = base / "project"
    generate_sysu(base / "SYSU-MM01", SYNTH)
    plain = config_to_dict(tiny_config(base / "SYSU-MM01"))
    plain["eval"].update(trials=2, sysu_modes=["all"], sysu_shots=["single"])  # quick, as test_evaluate_stage
    plain["track"].update(tracking_uri=server.url, experiment="vireid-s3", model_name=MODEL_NAME)
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(plain), encoding="utf-8")
    cfg = load_config(root / "params.yaml")
    shards = prepare(cfg.data, root / "data" / "shards")
    trainer = Trainer(cfg, shards)
    trainer.run_epoch()
    trainer.save_model(root / "outputs/train/model.pt")
    # the pipeline run, as the train stage starts and records it
    target = resolve_target(cfg.track, root)
    manifest = json.loads((shards / "manifest.json").read_text())
    run_id = start_pipeline_run(target, config=config_to_dict(cfg), git_commit=git_commit(root),
                                data_hash=str(manifest["sha256_total"]), dataset="sysu", protocol="",
                                run_name="pipeline")
    end_run(target.tracking_uri, run_id)
    atomic_write_json(root / "outputs/train/mlflow_run.json", run_record(target, run_id, root))
    (root / "dvc.yaml").write_text(yaml.safe_dump(_dvc_yaml(("evaluate", "register")), sort_keys=False),
                                   encoding="utf-8")
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], root, timeout=120)
    out = run([sys.executable, "-m", "dvc", "repro", "register"], root)
    assert "registered vireid-s3 v1 as champion: first champion" in out.stdout + out.stderr
    return Project(root, run_id)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------------------------------
# evaluate and register


def test_evaluate_and_register_keep_their_artifacts_in_the_bucket(server: Server, project: Project) -> None:
    import mlflow
    from mlflow import MlflowClient

    from vireid.evaluation.provenance import file_sha256
    from vireid.tracking import flatten_metrics, load_logged_embedder, use_tracking_uri
    from vireid.training.checkpoint import load_model

    root, run_id = project.root, project.run_id
    record = json.loads((root / "outputs/register/registration.json").read_text())
    assert (record["model_name"], record["version"], record["alias"]) == (MODEL_NAME, "1", "champion")
    assert record["run_id"] == run_id and record["tracking_uri"] == server.url and record["promoted"]
    client = MlflowClient(server.url, registry_uri=server.url)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert (champion.version, champion.run_id) == ("1", run_id)

    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # the clients see the server only
    metrics = json.loads((root / "outputs/eval/metrics.json").read_text())
    logged = flatten_metrics({k: v for k, v in metrics.items() if k != "provenance"})
    assert "sysu/all/single/mAP" in logged and "chance/sysu/all/single/mAP" in logged
    assert {k: run.data.metrics.get(k) for k in logged} == logged
    assert run.data.metrics["sysu/all/single/mAP"] == metrics["sysu/all/single/mAP"]
    assert run.data.tags["eval.model_sha256"] == file_sha256(root / "outputs/train/model.pt")
    assert run.data.tags["registered_version"] == "1" and run.data.tags["registered_alias"] == "champion"

    # the plots and the registered model are objects of the bucket, the very bytes the server serves
    in_run = server.objects(run.info.artifact_uri)
    for plot in ("cmc.png", "ranked_list.png"):
        assert in_run[f"plots/{plot}"] == (root / "outputs/eval" / plot).read_bytes()
    model_id = champion.source.removeprefix("models:/")
    assert champion.source == f"models:/{model_id}" and model_id
    in_bucket = server.objects(client.get_logged_model(model_id).artifact_location)
    assert {"MLmodel", "data/model.pt2"} <= set(in_bucket), sorted(in_bucket)
    download = root.parent / "champion-download"
    with use_tracking_uri(server.url):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}@champion",
                                                         dst_path=str(download)))
    served = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    # the client adds which version it resolved; every other file is the bucket's
    assert yaml.safe_load(served.pop("registered_model_meta")) == {"model_name": MODEL_NAME, "model_version": "1"}
    assert served == in_bucket

    # loaded back through the server by its registry URI, it embeds like model.pt
    module, meta = load_logged_embedder(server.url, f"models:/{MODEL_NAME}@champion")
    assert (meta["image_height"], meta["image_width"]) == (64, 32)
    eager, _ = load_model(root / "outputs/train/model.pt", "cpu")
    images = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(7))
    modality = torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        expected = eager.embed(images, modality)
        got = module(images, modality)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # not a constant embedding


# ---------------------------------------------------------------------------------------
# publish and restore


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from vireid.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_publish_then_restore_into_another_checkout(server: Server, project: Project, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    root, run_id = project.root, project.run_id
    monkeypatch.chdir(root)
    code, out, err = cli(["publish"], capsys)
    assert code == 0, err
    assert f"to MLflow run {run_id} in {server.url}" in out and f"vireid restore {run_id}" in out
    run = MlflowClient(server.url).get_run(run_id)
    assert run.data.tags["pipeline_state"] == "published"
    assert run.data.tags["pipeline_state.dvc_lock_md5"] == md5((root / "dvc.lock").read_bytes())
    in_bucket = server.objects(f"{run.info.artifact_uri}/pipeline")
    assert set(in_bucket) == {*PUBLISHED, "state.json"}
    for rel in PUBLISHED:
        assert in_bucket[rel] == (root / rel).read_bytes(), rel
    state = json.loads(in_bucket["state.json"])
    assert state["files"] == {rel: md5((root / rel).read_bytes()) for rel in PUBLISHED}
    assert (state["run_id"], state["lock"], state["stages"]) == (run_id, "dvc.lock", ["evaluate", "register"])

    # another checkout, where git has an older dvc.lock: restored (git keeps the old one)
    dest = tmp_path / "checkout"
    dest.mkdir()
    (dest / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    git = ["git", "-C", str(dest), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "dvc.lock"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "old lock"], check=True)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["restore", run_id, "--dest", str(dest), "--params", str(root / "params.yaml")], capsys)
    assert code == 0, err
    assert f"from MLflow run {run_id} in {server.url}" in out and "`dvc pull` now fetches" in out
    for rel in PUBLISHED:
        assert (dest / rel).read_bytes() == (root / rel).read_bytes(), rel
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")
                  if p.is_file() and ".git" not in p.parts) == sorted(PUBLISHED)

    # local changes are not overwritten (nothing is written), unless --force
    (dest / "dvc.lock").write_text("edited by hand\n")
    (dest / "outputs/eval/metrics.json").unlink()
    code, out, err = cli(["restore", run_id, "--dest", str(dest), "--tracking-uri", server.url], capsys)
    assert code == 2
    assert err.strip() == (f"error: {dest / 'dvc.lock'}: has local changes that restore would overwrite "
                           "(nothing restored; commit or move them, or pass --force)")
    assert not (dest / "outputs/eval/metrics.json").exists()
    code, out, err = cli(["restore", run_id, "--dest", str(dest), "--tracking-uri", server.url, "--force"], capsys)
    assert code == 0, err
    for rel in PUBLISHED:
        assert (dest / rel).read_bytes() == (root / rel).read_bytes(), rel


def _copy_state(root: Path, to: Path) -> Path:
    """The files publish reads, copied from the project (no model, no shards)."""
    for rel in ("dvc.yaml", *PUBLISHED, "outputs/train/mlflow_run.json"):
        (to / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, to / rel)
    return to


@pytest.mark.parametrize("fault, fault_at, says", [
    ("no lock", "dvc.lock", "missing: no DVC lock (run dvc repro in this folder first)"),
    ("metrics edited", "outputs/eval/metrics.json", "the lock is not the lock of the current outputs"),
    ("registration edited", "outputs/register/registration.json", "the lock is not the lock of the current outputs"),
    ("run record edited", "outputs/train/mlflow_run.json", "the lock is not the lock of the current outputs"),
    ("parameter changed", "params.yaml", "eval.trials is 3 but"),
    ("no register stage", "dvc.lock", "records no output outputs/register/registration.json"),
])
def test_publish_refuses_a_missing_or_stale_lock(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str], fault: str, fault_at: str,
                                                 says: str) -> None:
    work = _copy_state(project.root, tmp_path)
    if fault == "no lock":
        (work / "dvc.lock").unlink()
    elif fault == "parameter changed":
        params = yaml.safe_load((work / "params.yaml").read_text())
        params["eval"]["trials"] = 3
        (work / "params.yaml").write_text(yaml.safe_dump(params))
    elif fault == "no register stage":
        lock = yaml.safe_load((work / "dvc.lock").read_text())
        del lock["stages"]["register"]
        (work / "dvc.lock").write_text(yaml.safe_dump(lock))
    else:
        with (work / fault_at).open("a") as fh:
            fh.write(" ")
    monkeypatch.chdir(work)
    code, out, err = cli(["publish"], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {work / fault_at}: ") and says in err, err
    assert len(err.strip().splitlines()) == 1


def test_restore_refuses_an_unknown_run_or_one_with_nothing_published(server: Server, project: Project,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    unknown = "0" * 32
    code, out, err = cli(["restore", unknown, "--dest", str(tmp_path), "--tracking-uri", server.url], capsys)
    assert code == 2 and err.startswith(f"error: MLflow run {unknown} not found in {server.url} ("), err
    client = MlflowClient(server.url)
    bare = client.create_run(client.get_experiment_by_name("vireid-s3").experiment_id).info.run_id
    code, out, err = cli(["restore", bare, "--dest", str(tmp_path), "--tracking-uri", server.url], capsys)
    assert code == 2
    assert err.strip() == (f"error: MLflow run {bare} in {server.url}: no published pipeline state "
                           "(run vireid publish where dvc repro ran)")
    assert list(tmp_path.iterdir()) == []
