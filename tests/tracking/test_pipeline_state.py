"""``vireid publish`` / ``vireid restore`` (vireid.tracking.pipeline_state) without a server:
which stages a state covers (on the repository's own dvc.lock), the metrics files dvc.yaml
declares, and a restore that refuses a tampered or incomplete published state before it
writes anything. Against a real server with S3 artifacts: tests/infra/test_mlflow_s3.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tests._params import REPO
from vireid.config import config_to_dict
from vireid.tracking import TrackingError, start_pipeline_run
from vireid.tracking.pipeline_state import (
    declared_metrics,
    file_md5,
    restore_state,
    state_stages,
)
from vireid.tracking.runs import set_tags
from vireid.tracking.store import client
from vireid.tracking.tags import TAG_PIPELINE_STATE


def test_the_state_covers_register_and_its_upstream_stages_not_tune() -> None:
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert set(lock) >= {"synth", "prepare", "train", "evaluate", "register", "tune"}
    assert state_stages(lock, ["outputs/eval/metrics.json", "outputs/register/registration.json"]) == [
        "synth", "prepare", "train", "evaluate", "register"]
    assert state_stages(lock, ["outputs/eval/metrics.json"]) == ["synth", "prepare", "train", "evaluate"]
    assert state_stages(lock, ["outputs/tune/summary.json"]) == ["synth", "prepare", "tune"]
    assert state_stages(lock, ["not/an/output"]) == []


def test_declared_metrics_of_dvc_yaml(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert declared_metrics(REPO / "dvc.yaml", params) == ["outputs/eval/metrics.json"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({
        "metrics": ["top/level.json", "./outputs/eval/metrics.json"],
        "stages": {"a": {"cmd": "x", "metrics": [{"${data.root}/m.json": {"cache": False}}, "plain.json"]},
                   "b": {"cmd": "y", "outs": ["not/a/metric.json"]}}}))
    assert declared_metrics(tmp_path / "dvc.yaml", params) == [
        "top/level.json", "outputs/eval/metrics.json", f"{params['data']['root']}/m.json", "plain.json"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"a": {"cmd": "x", "metrics": ["${nope.key}/m.json"]}}}))
    with pytest.raises(TrackingError, match=r"dvc.yaml: \$\{nope.key\} is not a value of the parameters file"):
        declared_metrics(tmp_path / "dvc.yaml", params)
    with pytest.raises(TrackingError, match=r"missing\.yaml: missing: no dvc.yaml \(run in the folder that holds dvc.yaml\)"):
        declared_metrics(tmp_path / "missing.yaml", params)


def test_file_md5_is_dvcs_md5(tmp_path: Path) -> None:
    crlf = tmp_path / "a.json"
    crlf.write_bytes(b'{"a": 1}\r\n')
    assert file_md5(crlf) == hashlib.md5(b'{"a": 1}\r\n').hexdigest()  # DVC 3 locks: the bytes
    assert file_md5(crlf, "md5-dos2unix") == hashlib.md5(b'{"a": 1}\n').hexdigest()  # DVC 2 locks


def _published_run(target, config, files: dict[str, bytes], manifest_files: dict[str, str], tmp: Path) -> str:
    """A run with ``files`` under ``pipeline/``, a state.json listing ``manifest_files`` and the tag."""
    run_id = start_pipeline_run(target, config=config_to_dict(config), git_commit="c", data_hash="d",
                                dataset="sysu", protocol="")
    staging = tmp / "staging"
    for rel, data in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
    (staging / "state.json").write_text(json.dumps({"format": "vireid-pipeline-state/1", "run_id": run_id,
                                                    "files": manifest_files}))
    client(target.tracking_uri).log_artifacts(run_id, str(staging), "pipeline")
    set_tags(target.tracking_uri, run_id, {TAG_PIPELINE_STATE: "published"})
    return run_id


def test_restore_refuses_a_path_outside_the_destination(target, config, tmp_path: Path) -> None:
    evil = b"planted\n"
    run_id = _published_run(target, config, {"dvc.lock": evil},
                            {"../evil.txt": hashlib.md5(evil).hexdigest()}, tmp_path)
    dest = tmp_path / "a" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(TrackingError, match=r"state\.json: names '\.\./evil\.txt', not a relative path inside "
                                            r"the project \(nothing restored\)"):
        restore_state(target.tracking_uri, run_id, dest)
    assert list((tmp_path / "a").rglob("*")) == [dest]


def test_restore_refuses_a_file_that_does_not_match_the_manifest(target, config, tmp_path: Path) -> None:
    run_id = _published_run(target, config, {"dvc.lock": b"new lock\n", "params.yaml": b"a: 1\n"},
                            {"params.yaml": hashlib.md5(b"a: 1\n").hexdigest(),
                             "dvc.lock": hashlib.md5(b"old lock\n").hexdigest()}, tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(TrackingError, match=rf"runs:/{run_id}/pipeline/dvc.lock: md5 differs from .*state\.json "
                                            r"\(an interrupted publish: rerun vireid publish\)"):
        restore_state(target.tracking_uri, run_id, dest)
    assert list(dest.iterdir()) == []
    # and with the manifest right, both files are written
    good = _published_run(target, config, {"dvc.lock": b"lock\n", "params.yaml": b"a: 1\n"},
                          {"params.yaml": hashlib.md5(b"a: 1\n").hexdigest(),
                           "dvc.lock": hashlib.md5(b"lock\n").hexdigest()}, tmp_path / "2")
    manifest, written = restore_state(target.tracking_uri, good, dest)
    assert sorted(p.name for p in written) == ["dvc.lock", "params.yaml"] and manifest["run_id"] == good
    assert (dest / "dvc.lock").read_bytes() == b"lock\n" and (dest / "params.yaml").read_bytes() == b"a: 1\n"
