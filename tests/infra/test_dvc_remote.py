"""The DVC remote of infra/ for real: a SeaweedFS S3 server (started here) as the remote of a
temporary git + DVC repository, configured as infra/dvc/config.example and infra/README.md
say. Real shards come from vireid's own synth and prepare stages (``dvc repro prepare`` on a
tiny generated SYSU-MM01 tree, the repository's stage definitions), go up with ``dvc push``,
and come back with ``dvc pull``: in the same checkout after its shards and DVC cache are
deleted (credentials and endpoint in the git-ignored ``.dvc/config.local``, as on a laptop),
and in a fresh clone with credentials and endpoint from the standard ``AWS_*`` variables
only (as in a RayJob pod: ``dvc pull --allow-missing``). The pulled shard set verifies and
every file hashes as the pushed one; the keys never reach the committed ``.dvc/config``.

DVC runs as ``python -m dvc`` of this environment in a subprocess (cwd the temporary repo);
the stages' ``python`` is this environment's too (its folder first on PATH)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests._params import params_file
from tests.infra.s3_server import (
    ACCESS_KEY,
    SECRET_KEY,
    SeaweedS3,
    list_keys,
    make_bucket,
)
from tests.training.conftest import SYNTH
from vireid.config import config_to_dict
from vireid.data.shards import ShardSet
from vireid.io import sha256_file

# no Ray: runs beside the Ray tests under `make test` (each SeaweedFS server has its own ports)
pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BUCKET, PREFIX = "vireid-dvc", "cache"  # infra/dvc/config.example: url = s3://vireid-dvc/cache
STAGES = ("synth", "prepare")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without any AWS_* variable (so nothing reaches DVC by accident),
    this interpreter's folder first on PATH (the stages' ``python``), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@localhost")
    return {**env, **(extra or {})}


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    cmd = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else list(args)
    proc = subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _pipeline_repo(repo: Path) -> None:
    """A git + DVC repo with the repository's synth and prepare stages (same commands, params
    and outputs; code deps on vireid/ dropped: the package is installed, not copied), its
    ``pipelines/`` entry points, and a params.yaml of a tiny generated SYSU-MM01 at 64x32."""
    repo.mkdir()
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    kept = {}
    for name in STAGES:
        stage = dict(stages[name])
        stage["deps"] = [d for d in stage.get("deps", []) if not str(d).startswith("vireid/")]
        kept[name] = stage
    # a stand-in for train: reads the shards, depends on a train.* parameter (what the job sets)
    kept["rows"] = {"cmd": "python -c \"import json; m = json.load(open('data/shards/manifest.json')); "
                           "open('rows.txt', 'w').write(json.dumps(sorted(m['splits'])))\"",
                    "deps": ["data/shards"], "params": ["train.seed"], "outs": [{"rows.txt": {"cache": False}}]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": kept}, sort_keys=False), encoding="utf-8")
    shutil.copytree(REPO / "pipelines", repo / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    params_file(repo / "params.yaml", {"data": {
        "dataset": "sysu", "root": "data/raw/SYSU-MM01", "synthetic": True, "synth": config_to_dict(SYNTH),
        "holdout_identities": 2, "image_height": 64, "image_width": 32, "shard_rows": 64}})
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")  # data/, outputs/, mlruns/... stay out of git
    _run(repo, "git", "init", "-q", "-b", "main")
    _run(repo, "dvc", "init", "-q")
    _run(repo, "dvc", "config", "core.analytics", "false")


@pytest.fixture(scope="module")
def s3(s3_server: SeaweedS3) -> SeaweedS3:
    """The session's S3 server (tests/conftest.py) with the remote's bucket, made as the
    compose stack's one-shot `buckets` service makes it."""
    make_bucket(s3_server, BUCKET)
    return s3_server


@pytest.fixture(scope="module")
def pushed(s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The maintainer's steps of infra/README.md: the remote (url committed; endpoint and keys
    with --local), ``dvc repro prepare``, commit, ``dvc push``. Returns the repo and the
    sha256 of every shard file as prepared."""
    repo = tmp_path_factory.mktemp("dvc-remote") / "repo"
    _pipeline_repo(repo)
    _run(repo, "dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/{PREFIX}")
    _run(repo, "dvc", "remote", "modify", "--local", "storage", "endpointurl", s3.endpoint)
    _run(repo, "dvc", "remote", "modify", "--local", "storage", "access_key_id", ACCESS_KEY)
    _run(repo, "dvc", "remote", "modify", "--local", "storage", "secret_access_key", SECRET_KEY)
    _run(repo, "dvc", "repro", "prepare")
    shards = repo / "data" / "shards"
    ShardSet(shards).verify()
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "tiny shards and the DVC remote")
    out = _run(repo, "dvc", "push")
    assert "pushed" in out, out
    return repo, _hashes(shards)


def test_push_uploads_the_shards_and_the_keys_stay_out_of_git(s3: SeaweedS3, pushed: tuple[Path, dict[str, str]]) -> None:
    repo, original = pushed
    assert "manifest.json" in original and any(p.endswith(".arrow") for p in original)
    keys = list_keys(s3, BUCKET, f"{PREFIX}/")
    # one object per shard file plus the directory listing (.dir) of data/shards
    assert len([k for k in keys if not k.endswith(".dir")]) == len(original), keys
    assert sum(k.endswith(".dir") for k in keys) == 1, keys
    committed = _run(repo, "git", "show", "HEAD:.dvc/config")
    assert f"url = s3://{BUCKET}/{PREFIX}" in committed
    for secret in (ACCESS_KEY, SECRET_KEY, s3.endpoint):
        assert secret not in committed
        assert secret not in (repo / ".dvc" / "config").read_text(encoding="utf-8")
    local = (repo / ".dvc" / "config.local").read_text(encoding="utf-8")
    assert ACCESS_KEY in local and SECRET_KEY in local and s3.endpoint in local
    tracked = _run(repo, "git", "ls-files").split()
    assert ".dvc/config" in tracked and ".dvc/config.local" not in tracked and "dvc.lock" in tracked
    assert not any(p.startswith("data/") for p in tracked)  # neither the shards nor the raw tree
    _run(repo, "git", "check-ignore", "-q", ".dvc/config.local")  # DVC's own .dvc/.gitignore
    # the shards are pinned by dvc.lock, as a directory hash the remote now holds
    lock = yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8"))
    (out,) = [o for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/shards"]
    md5 = out["md5"]  # "<hash>.dir", stored as files/md5/<2 chars>/<rest>
    assert f"{PREFIX}/files/md5/{md5[:2]}/{md5[2:]}" in keys, (md5, keys)


def test_pull_restores_the_deleted_shards_and_cache(pushed: tuple[Path, dict[str, str]]) -> None:
    repo, original = pushed
    shutil.rmtree(repo / "data" / "shards")
    shutil.rmtree(repo / ".dvc" / "cache")
    _run(repo, "dvc", "pull")  # endpoint and keys from .dvc/config.local
    pulled = repo / "data" / "shards"
    ShardSet(pulled).verify()
    assert _hashes(pulled) == original
    assert "up to date" in _run(repo, "dvc", "status", "prepare").lower()


def test_fresh_clone_pulls_with_the_standard_aws_variables_only(
        s3: SeaweedS3, pushed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """A RayJob pod: the repository (no cache, no config.local, no raw tree) and the
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL / AWS_REGION of the Secret.
    Then the job's `dvc exp run --allow-missing -S train...`: synth and prepare, whose raw
    tree is absent but which did not change, are skipped; the stage after them runs on the
    pulled shards."""
    repo, original = pushed
    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / ".dvc" / "config.local").exists() and not (clone / ".dvc" / "cache").exists()
    env = _env(s3.environ())
    _run(clone, "dvc", "pull", "--allow-missing", env=env)  # --allow-missing: the raw tree is not cached
    assert not (clone / "data" / "raw" / "SYSU-MM01").exists()  # not in the remote, not in git
    pulled = clone / "data" / "shards"
    ShardSet(pulled).verify()
    assert _hashes(pulled) == original
    out = _run(clone, "dvc", "exp", "run", "--allow-missing", "-S", "train.seed=7", env=env)
    assert not (clone / "data" / "raw" / "SYSU-MM01").exists(), out  # synth did not run (it would generate it)
    assert _hashes(pulled) == original  # prepare did not run
    assert json.loads((clone / "rows.txt").read_text(encoding="utf-8")) == sorted(ShardSet(pulled).manifest["splits"])
