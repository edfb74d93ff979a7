"""Promotion only between comparable evaluations, and an idempotent register stage.

Real objects throughout: a generated RegDB tree, shards of trials 1 and 2 (and trial 1
re-encoded: the same split, other contents), tiny models trained in-process, the evaluate
stage writing metrics.json with its provenance, the register stage in a sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tests._params import params_file
from vireid.config import Config, SyntheticConfig, config_from_dict, config_to_dict, replace
from vireid.data.prepare import prepare
from vireid.data.shards import ShardSet
from vireid.data.synthetic import generate_regdb
from vireid.evaluation.provenance import ShardMismatchError
from vireid.evaluation.regdb import TrialMismatchError
from vireid.stages import evaluate as evaluate_stage
from vireid.stages import register as register_stage
from vireid.tracking import TrackingError, run_record, start_pipeline_run
from vireid.tracking.store import TrackingTarget
from vireid.training.checkpoint import read_model_file, save_model

SYNTH = SyntheticConfig(seed=1, regdb_identities=8, regdb_images_per_modality=2, image_height=64, image_width=32)
HEAD = "regdb/v2t/mAP"
CPU = torch.device("cpu")


def regdb_config(root: Path, **data: object) -> Config:
    plain = config_to_dict(Config())
    plain["data"].update(dataset="regdb", root=str(root), regdb_trial=1, holdout_identities=1,
                         image_height=64, image_width=32, synth=config_to_dict(SYNTH), **data)
    plain["model"].update(arch="tiny", pretrained=False, memory_size=2)
    plain["train"].update(epochs=1, identities_per_batch=2, instances_per_modality=2, warmup_epochs=0,
                          milestones=[], iters_per_epoch=2, validate_every=1)
    plain["eval"].update(headline=HEAD)
    return config_from_dict(plain)


def train(cfg: Config, shards: Path, out: Path) -> Path:
    from vireid.training.loop import Trainer

    torch.manual_seed(0)
    trainer = Trainer(cfg, shards)
    trainer.run_epoch()
    return trainer.save_model(out)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("regdb")
    generate_regdb(base / "RegDB", SYNTH)
    cfg = regdb_config(base / "RegDB")
    cfg2 = replace(cfg, data={"regdb_trial": 2})
    cfg_q80 = replace(cfg, data={"jpeg_quality": 80})
    w: dict[str, object] = {"base": base, "cfg": cfg, "cfg2": cfg2, "cfg_q80": cfg_q80}
    w["s1"] = prepare(cfg.data, base / "s1")
    w["s2"] = prepare(cfg2.data, base / "s2")
    w["s1_q80"] = prepare(cfg_q80.data, base / "s1_q80")  # trial 1 again, other shard contents
    w["m1"] = train(cfg, w["s1"], base / "m1.pt")
    w["m1_q80"] = train(cfg_q80, w["s1_q80"], base / "m1_q80.pt")
    return w


def test_evaluate_reads_the_trial_from_the_shards_not_the_params(world, tmp_path: Path) -> None:
    """The issue's case: params say trial 1, --shards points at trial-2 shards."""
    cfg, s2 = world["cfg"], world["s2"]
    with pytest.raises(TrialMismatchError) as err:
        evaluate_stage.evaluate(cfg, world["m1"], s2, tmp_path, CPU)
    assert str(err.value).startswith(f"{s2 / 'manifest.json'}: shards of RegDB trial 2, but {world['m1']} "
                                     "was trained on trial 1")
    assert not (tmp_path / "metrics.json").exists()


def test_evaluate_refuses_other_shard_contents(world, tmp_path: Path) -> None:
    with pytest.raises(ShardMismatchError, match="was trained on shards"):
        evaluate_stage.evaluate(world["cfg"], world["m1"], world["s1_q80"], tmp_path, CPU)
    assert not (tmp_path / "metrics.json").exists()


def test_evaluate_refuses_shards_changed_after_prepare(world, tmp_path: Path) -> None:
    """The manifest's sha256_total becomes the registry's data hash: evaluate first checks
    that the shard files still hash to what the manifest records (ShardSet.verify)."""
    import shutil

    import pyarrow as pa

    from vireid.data import DatasetError

    shards = Path(shutil.copytree(world["s1"], tmp_path / "shards"))
    manifest = ShardSet(shards).manifest
    part = shards / manifest["splits"]["gallery"]["shards"][0]["file"]
    table = pa.ipc.open_file(pa.BufferReader(part.read_bytes())).read_all()  # not mapped: rewritten below
    images = table.column("image").to_pylist()
    swapped = table.set_column(0, "image", pa.array([images[1], images[0], *images[2:]], pa.binary()))
    with pa.OSFile(str(part), "wb") as sink, pa.ipc.new_file(sink, swapped.schema) as writer:
        writer.write_table(swapped)  # still a valid shard, two gallery images exchanged
    with pytest.raises(DatasetError, match=rf"^{part}: content hash differs from manifest.json"):
        evaluate_stage.evaluate(world["cfg"], world["m1"], shards, tmp_path / "out", CPU)
    train_part = shards / manifest["splits"]["train"]["shards"][0]["file"]
    train_part.unlink()  # a split evaluate does not read
    shutil.copy(world["s1"] / part.relative_to(shards), part)
    with pytest.raises(DatasetError, match=rf"^{train_part}: shard of split 'train' listed in manifest.json is missing"):
        evaluate_stage.evaluate(world["cfg"], world["m1"], shards, tmp_path / "out", CPU)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_evaluate_refuses_test_identities_the_model_trained_on(world, tmp_path: Path) -> None:
    """A model whose metadata lies about its trial (and has no shard hash) is still caught:
    trial 2's test identities include trial 1's training identities."""
    obj = read_model_file(world["m1"])
    meta = {k: v for k, v in obj["meta"].items() if k != "shards_sha256"} | {"regdb_trial": 2}
    relabelled = save_model(tmp_path / "relabelled.pt", obj["model"], meta)
    with pytest.raises(ShardMismatchError, match="test identities .* are identities .* was trained on"):
        evaluate_stage.evaluate(world["cfg2"], relabelled, world["s2"], tmp_path / "out", CPU)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_metrics_json_carries_its_provenance(world, tmp_path: Path) -> None:
    metrics = evaluate_stage.evaluate(world["cfg"], world["m1"], world["s1"], tmp_path, CPU)
    prov = json.loads((tmp_path / "metrics.json").read_text())["provenance"]
    assert prov == metrics["provenance"]
    manifest = ShardSet(world["s1"]).manifest
    assert (prov["dataset"], prov["regdb_trial"], prov["data_kind"]) == ("regdb", 1, "synthetic")
    assert prov["shards_sha256"] == manifest["sha256_total"] and prov["protocol"] == "regdb/v2t@trial1"
    assert prov["headline"] == HEAD and prov["source_root"] == manifest["source_root"]
    assert len(prov["model_sha256"]) == 64 and len(prov["manifest_sha256"]) == 64


class Stage:
    """The register stage on one sqlite store, one evaluation per (model, shards)."""

    def __init__(self, world: dict, root: Path, name: str) -> None:
        self.world, self.root, self.name = world, root, name
        self.uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
        self.client = MlflowClient(self.uri, registry_uri=self.uri)

    def evaluate(self, cfg: Config, model: Path, shards: Path, tag: str) -> Path:
        out = self.root / f"eval-{tag}"
        evaluate_stage.evaluate(cfg, model, shards, out, CPU)
        return out / "metrics.json"

    def register(self, cfg: Config, model: Path, metrics: Path, tag: str) -> dict:
        params = params_file(self.root / f"params-{tag}.yaml", config_to_dict(cfg) | {
            "track": {"tracking_uri": self.uri, "model_name": self.name, "experiment": "prov"}})
        run_file = self.root / f"run-{tag}.json"
        if not run_file.exists():
            target = TrackingTarget(self.uri, str(self.root / "mlruns" / "artifacts"), "prov")
            run_id = start_pipeline_run(target, config=config_to_dict(cfg), git_commit="c", data_hash="",
                                        dataset="regdb", protocol="")
            run_file.write_text(json.dumps(run_record(target, run_id)))
        return register_stage.main(["--params", str(params), "--model", str(model), "--metrics", str(metrics),
                                    "--run-file", str(run_file), "--out", str(self.root / f"reg-{tag}.json")])

    def versions(self) -> list[str]:
        return sorted(str(v.version) for v in self.client.search_model_versions(f"name='{self.name}'"))

    def aliases(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.client.get_registered_model(self.name).aliases.items()}


def test_register_compares_only_same_data_and_protocol(world, tmp_path: Path) -> None:
    stage = Stage(world, tmp_path, "comparable")
    cfg, cfg_q80 = world["cfg"], world["cfg_q80"]
    first = stage.register(cfg, world["m1"], stage.evaluate(cfg, world["m1"], world["s1"], "a"), "a")
    assert (first["version"], first["alias"]) == ("1", "champion")
    tags = stage.client.get_model_version("comparable", "1").tags
    assert tags["data_hash"] == ShardSet(world["s1"]).manifest["sha256_total"] and tags["data_kind"] == "synthetic"

    # the same split, other shard contents: never compared, whatever its headline
    other = stage.register(cfg_q80, world["m1_q80"],
                           stage.evaluate(cfg_q80, world["m1_q80"], world["s1_q80"], "b"), "b")
    assert (other["version"], other["alias"], other["promoted"]) == ("2", "challenger", False)
    assert "champion v1 was evaluated on other data" in other["reason"]
    assert "registered without promotion" in other["reason"]
    assert stage.aliases() == {"champion": "1", "challenger": "2"}


def test_register_refuses_metrics_of_another_model(world, tmp_path: Path) -> None:
    stage = Stage(world, tmp_path, "mixup")
    metrics = stage.evaluate(world["cfg"], world["m1"], world["s1"], "a")
    with pytest.raises(TrackingError, match="evaluates another model"):
        stage.register(world["cfg"], world["m1_q80"], metrics, "a")
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({k: v for k, v in json.loads(metrics.read_text()).items() if k != "provenance"}))
    with pytest.raises(TrackingError, match="no provenance"):
        stage.register(world["cfg"], world["m1"], legacy, "a")
    assert stage.client.search_model_versions("name='mixup'") == []


def test_register_is_idempotent_and_completes_an_interrupted_run(world, tmp_path: Path) -> None:
    stage = Stage(world, tmp_path, "again")
    cfg = world["cfg"]
    metrics = stage.evaluate(cfg, world["m1"], world["s1"], "a")
    first = stage.register(cfg, world["m1"], metrics, "a")
    assert (first["version"], first["alias"], first["reused"]) == ("1", "champion", False)
    logged = len(stage.client.search_logged_models(experiment_ids=[
        stage.client.get_experiment_by_name("prov").experiment_id]))

    again = stage.register(cfg, world["m1"], metrics, "a")
    assert (again["version"], again["alias"], again["reason"], again["reused"]) == \
        ("1", "champion", first["reason"], True)
    assert stage.versions() == ["1"]
    assert len(stage.client.search_logged_models(experiment_ids=[
        stage.client.get_experiment_by_name("prov").experiment_id])) == logged  # not logged again

    # killed after the version was created, before alias and decision (what a kill leaves)
    stage.client.delete_registered_model_alias("again", "champion")
    stage.client.delete_model_version_tag("again", "1", "decision")
    stage.client.delete_model_version_tag("again", "1", "reason")
    done = stage.register(cfg, world["m1"], metrics, "a")
    assert (done["version"], done["alias"], done["reused"]) == ("1", "champion", True)
    assert stage.versions() == ["1"] and stage.aliases() == {"champion": "1"}
    assert stage.client.get_model_version("again", "1").tags["decision"] == "champion"

    # killed after the alias moved, before the decision was recorded
    stage.client.delete_model_version_tag("again", "1", "decision")
    done = stage.register(cfg, world["m1"], metrics, "a")
    assert (done["version"], done["alias"]) == ("1", "champion") and "interrupted" in done["reason"]
    assert stage.versions() == ["1"]
    assert json.loads((tmp_path / "reg-a.json").read_text())["version"] == "1"


def test_register_refuses_an_export_that_does_not_reproduce_the_model(world, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The register stage checks the torch.export program it logs against the eager model; a
    program that does not reproduce it (here: exported from a perturbed copy) is a
    TrackingError naming the model file, and nothing is logged or registered."""
    import copy

    from vireid.tracking import model as tracking_model

    real_export = tracking_model.export_program

    def perturbed_export(model, example):
        other = copy.deepcopy(model)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
        return real_export(other, example)

    stage = Stage(world, tmp_path, "unfaithful")
    metrics = stage.evaluate(world["cfg"], world["m1"], world["s1"], "a")
    monkeypatch.setattr(tracking_model, "export_program", perturbed_export)
    with pytest.raises(TrackingError, match=rf"^{world['m1']}: its torch.export program .* does not reproduce "
                                            r"its embeddings: exported embedding differs from model.embed by "):
        stage.register(world["cfg"], world["m1"], metrics, "a")
    assert stage.client.search_model_versions("name='unfaithful'") == []
    experiment = stage.client.get_experiment_by_name("prov").experiment_id
    assert stage.client.search_logged_models(experiment_ids=[experiment]) == []
    assert not (tmp_path / "reg-a.json").exists()

    monkeypatch.setattr(tracking_model, "export_program", real_export)  # the faithful program
    assert stage.register(world["cfg"], world["m1"], metrics, "a")["version"] == "1"


KILLER = """
import os, signal, sys
from mlflow import MlflowClient

point = sys.argv[1]
set_tag = MlflowClient.set_model_version_tag
if point == "alias":  # die when the alias is about to move
    MlflowClient.set_registered_model_alias = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
else:  # die when the decision is about to be recorded (the alias has moved)
    def tag(self, name, version, key, value):
        if key == "decision":
            os.kill(os.getpid(), signal.SIGKILL)
        return set_tag(self, name, version, key, value)
    MlflowClient.set_model_version_tag = tag
from vireid.stages import register
register.main(sys.argv[2:])
"""


@pytest.mark.parametrize("point", ["alias", "decision"])
def test_register_killed_half_way_completes_on_rerun(world, tmp_path: Path, point: str) -> None:
    """SIGKILL the register stage (a separate process) at two points; the rerun completes it
    with the same version, and no duplicate version appears."""
    import os
    import subprocess
    import sys

    from tests._params import REPO

    stage = Stage(world, tmp_path, f"killed-{point}")
    cfg = world["cfg"]
    metrics = stage.evaluate(cfg, world["m1"], world["s1"], "a")
    params = params_file(tmp_path / "params-k.yaml", config_to_dict(cfg) | {
        "track": {"tracking_uri": stage.uri, "model_name": stage.name, "experiment": "prov"}})
    target = TrackingTarget(stage.uri, str(tmp_path / "mlruns" / "artifacts"), "prov")
    run_id = start_pipeline_run(target, config=config_to_dict(cfg), git_commit="c", data_hash="",
                                dataset="regdb", protocol="")
    run_file = tmp_path / "run-a.json"
    run_file.write_text(json.dumps(run_record(target, run_id)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, "-c", KILLER, point, "--params", str(params), "--model", str(world["m1"]),
                           "--metrics", str(metrics), "--run-file", str(run_file), "--out", str(tmp_path / "reg.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert stage.versions() == ["1"] and not (tmp_path / "reg.json").exists()
    assert "decision" not in stage.client.get_model_version(stage.name, "1").tags

    done = stage.register(cfg, world["m1"], metrics, "a")
    assert (done["version"], done["alias"], done["reused"]) == ("1", "champion", True)
    assert stage.versions() == ["1"] and stage.aliases() == {"champion": "1"}
    assert stage.client.get_model_version(stage.name, "1").tags["decision"] == "champion"
    again = stage.register(cfg, world["m1"], metrics, "a")
    assert (again["version"], again["reason"]) == ("1", done["reason"]) and stage.versions() == ["1"]
