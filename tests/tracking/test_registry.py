"""Registry: the promotion rule, aliases, and the champion loading back as an embedder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow import MlflowClient

from tests.tracking.conftest import IMAGE_H, IMAGE_W
from vireid.io import atomic_write_json
from vireid.tracking import (
    decide,
    load_logged_embedder,
    protocol_key,
    register,
    run_record,
    use_tracking_uri,
)

SYSU = "sysu/all/single@community"
HEAD = "sysu/all/single/mAP"


def test_protocol_key() -> None:
    assert protocol_key(HEAD, dataset="sysu", sysu_sampler="community") == SYSU
    assert protocol_key("sysu/indoor/multi/rank1", dataset="sysu", sysu_sampler="official") == \
        "sysu/indoor/multi@official"
    assert protocol_key("regdb/v2t/mAP", dataset="regdb", regdb_trial=3) == "regdb/v2t@trial3"
    assert protocol_key(HEAD, dataset="sysu", rerank=True) == SYSU + "+rerank"
    with pytest.raises(ValueError, match="data.dataset is 'regdb'"):
        protocol_key(HEAD, dataset="regdb")


def test_protocol_key_holds_the_evaluation_settings() -> None:
    """Issue 25 item 6: eval.flip and eval.trials change the numbers, so a flip-off (or
    2-draw) evaluation is another protocol than the flip-on, 10-draw champion's."""
    assert protocol_key(HEAD, dataset="sysu", flip=True, trials=10) == SYSU
    assert protocol_key(HEAD, dataset="sysu", flip=False) == SYSU + "+noflip"
    assert protocol_key(HEAD, dataset="sysu", trials=2) == SYSU + "+trials2"
    assert protocol_key(HEAD, dataset="sysu", rerank=True, flip=False, trials=3) == SYSU + "+rerank+noflip+trials3"
    # RegDB evaluates the shards' one split trial whatever eval.trials; flip still counts
    assert protocol_key("regdb/v2t/mAP", dataset="regdb", regdb_trial=2, trials=3) == "regdb/v2t@trial2"
    assert protocol_key("regdb/v2t/mAP", dataset="regdb", flip=False) == "regdb/v2t@trial1+noflip"
    d = decide(protocol=protocol_key(HEAD, dataset="sysu", flip=False), headline=HEAD, value=99.0,
               champion=_tags(protocol=protocol_key(HEAD, dataset="sysu")), champion_version="1")
    assert d.alias_role == "challenger" and "another protocol (sysu/all/single@community, this model: " \
        "sysu/all/single@community+noflip)" in d.reason


def _tags(protocol: str = SYSU, headline: str = HEAD, value: float = 45.0) -> dict[str, str]:
    return {"protocol": protocol, "headline": headline, "headline_value": repr(value)}


def test_decide_rule() -> None:
    d = decide(protocol=SYSU, headline=HEAD, value=41.2, champion=None, champion_version=None)
    assert d.alias_role == "champion"
    d = decide(protocol=SYSU, headline=HEAD, value=41.2, champion=_tags(), champion_version="3")
    assert (d.alias_role, d.reason) == ("challenger", f"headline {HEAD} 41.200 <= champion v3's 45.000")
    assert decide(protocol=SYSU, headline=HEAD, value=45.0, champion=_tags(),
                  champion_version="3").alias_role == "challenger"  # a tie does not promote
    d = decide(protocol=SYSU, headline=HEAD, value=46.0, champion=_tags(), champion_version="3")
    assert (d.alias_role, d.reason) == ("champion", f"headline {HEAD} 46.000 > champion v3's 45.000")
    d = decide(protocol=SYSU, headline=HEAD, value=99.0, champion=_tags(protocol="regdb/v2t@trial1"),
               champion_version="3")
    assert d.alias_role == "challenger" and "another protocol (regdb/v2t@trial1" in d.reason
    d = decide(protocol=SYSU, headline=HEAD, value=99.0, champion=_tags(headline="sysu/all/single/rank1"),
               champion_version="3")
    assert d.alias_role == "challenger" and "not comparable" in d.reason
    d = decide(protocol=SYSU, headline=HEAD, value=99.0, champion={}, champion_version="3")
    assert d.alias_role == "challenger" and "no recorded protocol" in d.reason
    assert decide(protocol=SYSU, headline=HEAD, value=math.nan, champion=_tags(),
                  champion_version="3").alias_role == "challenger"


def test_register_moves_champion_only_on_the_same_protocol(target, logged) -> None:
    run_id, model_uri = logged
    name = "promotion-test"

    def reg(value: float, protocol: str = SYSU) -> dict:
        return register(target.tracking_uri, model_name=name, model_uri=model_uri, run_id=run_id,
                        protocol=protocol, headline=HEAD, value=value, data_hash="d" * 64,
                        git_commit="abc123")

    c = MlflowClient(target.tracking_uri)

    def aliases() -> dict[str, str]:
        return {k: str(v) for k, v in c.get_registered_model(name).aliases.items()}

    first = reg(45.0)
    assert (first["version"], first["alias"], first["promoted"]) == ("1", "champion", True)
    assert first["previous_champion"] is None
    assert aliases() == {"champion": "1"}
    tags = c.get_model_version(name, "1").tags
    assert tags["protocol"] == SYSU and tags["headline"] == HEAD and float(tags["headline_value"]) == 45.0
    assert tags["data_hash"] == "d" * 64 and tags["git_commit"] == "abc123" and tags["run_id"] == run_id
    assert tags["decision"] == "champion"

    worse = reg(41.2)
    assert (worse["version"], worse["alias"], worse["promoted"]) == ("2", "challenger", False)
    assert worse["reason"] == f"headline {HEAD} 41.200 <= champion v1's 45.000"
    assert c.get_model_version(name, "2").tags["reason"] == worse["reason"]
    assert aliases() == {"champion": "1", "challenger": "2"}

    better = reg(47.5)
    assert (better["version"], better["alias"]) == ("3", "champion")
    assert better["reason"] == f"headline {HEAD} 47.500 > champion v1's 45.000"
    assert better["previous_champion"]["version"] == "1"
    assert aliases() == {"champion": "3", "challenger": "2"}

    other = reg(99.0, protocol="sysu/all/single@official")
    assert (other["version"], other["alias"]) == ("4", "challenger")
    assert "champion v3 was evaluated on another protocol (sysu/all/single@community" in other["reason"]
    assert aliases() == {"champion": "3", "challenger": "4"}


def test_champion_loads_and_embeds_like_the_source_model(target, logged, tiny_model) -> None:
    run_id, model_uri = logged
    name = "load-test"
    register(target.tracking_uri, model_name=name, model_uri=model_uri, run_id=run_id, protocol=SYSU,
             headline=HEAD, value=40.0, data_hash="d", git_commit="c")
    torch.manual_seed(1)
    images = torch.randn(5, 3, IMAGE_H, IMAGE_W)  # another batch size than the logged example
    modality = torch.tensor([1, 0, 0, 1, 1])
    expected = tiny_model.embed(images, modality)
    with use_tracking_uri(target.tracking_uri):
        loaded = mlflow.pytorch.load_model(f"models:/{name}@champion")
        info = mlflow.models.get_model_info(f"models:/{name}@champion")
    with torch.no_grad():
        got = loaded(images, modality)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.allclose(got.norm(dim=1), torch.ones(5), atol=1e-5)
    assert [s.name for s in info.signature.inputs.inputs] == ["images", "modality"]
    assert info.signature.inputs.inputs[0].shape == (-1, 3, IMAGE_H, IMAGE_W)
    with pytest.raises(RuntimeError, match="modality codes must be 0"):
        loaded(images, torch.tensor([0, 2, 0, 1, 1]))
    module, metadata = load_logged_embedder(target.tracking_uri, f"models:/{name}@champion")
    assert (metadata["image_height"], metadata["image_width"]) == (IMAGE_H, IMAGE_W)
    with torch.no_grad():
        torch.testing.assert_close(module(images, modality), expected, rtol=0, atol=1e-5)


def test_register_stage_via_cli(target, config, logged, model_file, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from vireid.cli import main
    from vireid.config import config_to_dict
    from vireid.evaluation.provenance import file_sha256
    from vireid.evaluation.report import build_metrics, protocol_entry

    run_id, _ = logged
    params = config_to_dict(config)
    params["track"].update(tracking_uri=target.tracking_uri, model_name="stage-test")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    per_trial = [{"rank1": 0.5, "mAP": 0.3, "mINP": 0.1}]
    provenance = {"model_sha256": file_sha256(model_file), "shards_sha256": "d" * 64, "protocol": SYSU,
                  "headline": HEAD, "data_kind": "synthetic"}
    atomic_write_json(tmp_path / "outputs/eval/metrics.json",
                      build_metrics({"sysu/all/single": protocol_entry(per_trial, sampler="community")})
                      | {"provenance": provenance})
    atomic_write_json(tmp_path / "outputs/train/mlflow_run.json", run_record(target, run_id))
    monkeypatch.chdir(tmp_path)
    assert main(["register", "--params", "params.yaml", "--model", str(model_file)]) == 0
    record = json.loads((tmp_path / "outputs/register/registration.json").read_text())
    assert record["alias"] == "champion" and record["version"] == "1" and record["run_id"] == run_id
    assert record["value"] == pytest.approx(30.0) and record["protocol"] == SYSU
    assert record["data_hash"] == "d" * 64  # from metrics.json's provenance
    assert "registered stage-test v1 as champion: first champion" in capsys.readouterr().out
    run = MlflowClient(target.tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["registered_version"] == "1"


def test_logged_model_id_is_passed_for_a_models_id_source() -> None:
    """register passes it to create_model_version: a tracking server refuses a ``models:/<id>``
    source without it (tests/infra/test_mlflow_s3.py registers through one)."""
    from vireid.tracking.registry import logged_model_id

    assert logged_model_id("models:/m-0123abcd") == "m-0123abcd"
    for other in ("models:/vireid/1", "models:/vireid@champion", "runs:/abc/model", "m-0123", "models:/"):
        assert logged_model_id(other) is None, other


def test_reregistering_reads_the_alias_not_the_stored_decision(target, logged) -> None:
    """Issue 25 item 1: v1 champion, then v2 better (champion); registering v1's model and
    evaluation again reuses v1, and its record says what the registry says now: v1 holds no
    alias and is not promoted, the champion is v2 (not "v1 champion, promoted")."""
    run_id, model_uri = logged
    name = "reread-alias"

    def reg(value: float, fp: str) -> dict:
        return register(target.tracking_uri, model_name=name, model_uri=model_uri, run_id=run_id,
                        protocol=SYSU, headline=HEAD, value=value, data_hash="d" * 64, git_commit="c",
                        fingerprint={"model_sha256": fp, "eval_sha256": fp})

    assert reg(45.0, "a")["alias"] == "champion"
    second = reg(47.5, "b")
    assert (second["version"], second["alias"], second["current_champion"]) == ("2", "champion", "2")
    again = reg(45.0, "a")
    assert (again["version"], again["reused"]) == ("1", True)
    assert (again["alias"], again["promoted"], again["current_champion"]) == (None, False, "2")
    assert again["reason"].startswith("alias champion now points to v2; at its registration: first champion")
    assert {k: str(v) for k, v in MlflowClient(target.tracking_uri).get_registered_model(name).aliases.items()} \
        == {"champion": "2"}
    assert reg(47.5, "b")["promoted"] is True  # the champion's own record is unchanged


def test_summary_says_when_the_registered_version_holds_no_alias(tmp_path: Path, capsys) -> None:
    """The summary of ``make run`` prints the registration as it stands (item 1's record):
    a version that lost the champion alias is not shown as "-> None"."""
    from tests._params import params_file
    from vireid.stages import summary

    params = params_file(tmp_path / "params.yaml", {"track": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}})
    atomic_write_json(tmp_path / "outputs/register/registration.json",
                      {"model_name": "vireid", "version": "1", "alias": None, "current_champion": "2",
                       "reason": "alias champion now points to v2; at its registration: first champion"})
    text = summary.main(["--params", str(params), "--outputs", str(tmp_path / "outputs")])
    assert "registry:  vireid v1 -> no alias (champion: v2): alias champion now points to v2;" in text
    assert not (tmp_path / "m.db").exists()
