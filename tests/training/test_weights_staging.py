"""The ImageNet weights file reaches every Ray worker the way the shards do (issue #24,
"Weights"): the driver checks it and stages it under ``<train.storage>/weights/<sha256>/``;
each worker copies it into its node's cache, verifies the sha256 and loads that copy; a
missing or damaged file is a one-line error naming the config key and the file at fault,
raised on the worker. The object store is pyarrow's local filesystem handed in as the store
(the same calls as S3)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pyarrow.fs
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from tests._params import params_file
from vireid.config import Config, config_to_dict
from vireid.data.staging import StagedFile, StagedFileError, file_source, local_file, stage_file
from vireid.errors import error_line
from vireid.modeling.backbone import PretrainedWeightsError, pretrained_file
from vireid.training.loop import Trainer, build_model, run_fingerprint
from vireid.training.ray_train import local_pretrained


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    """A small torch state dict file (not ResNet weights: staging does not care)."""
    torch.manual_seed(0)
    path = tmp_path / "driver" / "tiny.pth"
    path.parent.mkdir()
    torch.save(nn.Linear(4, 3).state_dict(), path)
    return path


@pytest.fixture
def r18_weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    state = resnet18(weights=None).state_dict()
    path = tmp_path / "driver" / "r18.pth"
    path.parent.mkdir(exist_ok=True)
    torch.save(state, path)
    return path, state


def test_object_store_file_reaches_a_worker_cache_once_with_identical_bytes(tiny_weights: Path,
                                                                            tmp_path: Path) -> None:
    store = pyarrow.fs.LocalFileSystem()
    sha = _sha(tiny_weights)
    source = file_source(tiny_weights, "head:6379", str(tmp_path / "bucket" / "weights"), store)
    assert source == StagedFile(str(tmp_path / "bucket" / "weights" / sha / "tiny.pth"), sha, store)
    local = local_file(source, tmp_path / "node-cache")
    assert local == tmp_path / "node-cache" / sha / "tiny.pth"
    assert local.read_bytes() == tiny_weights.read_bytes()
    state = torch.load(local, weights_only=True)
    torch.testing.assert_close(state, torch.load(tiny_weights, weights_only=True), rtol=0, atol=0)
    # a second worker on the node reuses the copy; staging again uploads nothing
    stamp = local.stat().st_mtime_ns
    assert local_file(source, tmp_path / "node-cache") == local and local.stat().st_mtime_ns == stamp
    staged = Path(source.path).stat().st_mtime_ns
    assert stage_file(tiny_weights, str(tmp_path / "bucket" / "weights"), store) == source
    assert Path(source.path).stat().st_mtime_ns == staged
    assert sorted(p.name for p in (tmp_path / "node-cache").iterdir()) == [f".{sha}.lock", sha]


def test_local_ray_reads_the_file_in_place_and_a_shared_folder_holds_one_copy(tiny_weights: Path,
                                                                              tmp_path: Path) -> None:
    sha = _sha(tiny_weights)
    assert file_source(tiny_weights, "", str(tmp_path / "storage")) == StagedFile(str(tiny_weights.resolve()), sha)
    assert not (tmp_path / "storage").exists()  # nothing staged on a local Ray
    source = file_source(tiny_weights, "head:6379", str(tmp_path / "storage"))
    assert source == StagedFile(str(tmp_path / "storage" / sha / "tiny.pth"), sha)
    assert local_file(source, tmp_path / "cache") == Path(source.path) and not (tmp_path / "cache").exists()
    # a damaged shared copy is staged again by the next run
    Path(source.path).write_bytes(b"damaged")
    assert stage_file(tiny_weights, str(tmp_path / "storage")) == source
    assert Path(source.path).read_bytes() == tiny_weights.read_bytes()
    assert [p.name for p in (tmp_path / "storage").iterdir()] == [sha]  # no temporaries left


def test_worker_builds_the_model_from_its_fetched_copy(r18_weights: tuple[Path, dict[str, torch.Tensor]],
                                                       tiny_shards: tuple[Path, Config], tmp_path: Path) -> None:
    path, state = r18_weights
    shards, base = tiny_shards
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, arch="resnet18", pretrained=True,
                                                              weights_path=str(path)))
    source = file_source(path, "head:6379", str(tmp_path / "bucket"), pyarrow.fs.LocalFileSystem())
    fetched = local_pretrained(source, cfg.model, tmp_path / "node-cache")
    path.unlink()  # the driver's file is not on the worker's node
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        build_model(cfg, 4)
    model = build_model(cfg, 4, str(fetched))
    torch.testing.assert_close(model.backbone.stems[1][0].weight, state["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"],
                               rtol=0, atol=0)
    trainer = Trainer(cfg, shards, weights_path=str(fetched))
    torch.testing.assert_close(trainer.model.backbone.stems[0][0].weight, state["conv1.weight"], rtol=0, atol=0)
    # the run (its name, its checkpoints) keeps the driver's config
    assert trainer.fingerprint == run_fingerprint(cfg, trainer.shards.manifest)


def test_damaged_staged_copy_is_a_one_line_error_naming_key_path_and_hashes(tiny_weights: Path,
                                                                          tmp_path: Path) -> None:
    store = pyarrow.fs.LocalFileSystem()
    source = file_source(tiny_weights, "head:6379", str(tmp_path / "bucket"), store)
    Path(source.path).write_bytes(tiny_weights.read_bytes()[:-5] + b"xxxxx")
    bad = _sha(Path(source.path))
    model = dataclasses.replace(Config().model, arch="resnet18", weights_path=str(tiny_weights))
    with pytest.raises(PretrainedWeightsError) as err:
        local_pretrained(source, model, tmp_path / "cache")
    msg = str(err.value)
    assert msg.startswith(f"model.weights_path: {source.path}: sha256 mismatch: ")
    assert bad[:12] in msg and source.sha256[:12] in msg and "\n" not in msg
    assert error_line(err.value) == f"error: {msg}"
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []  # not cached
    # a damaged copy in the node's cache is replaced by a fresh one
    Path(source.path).write_bytes(tiny_weights.read_bytes())
    local = local_file(source, tmp_path / "cache")
    local.write_bytes(b"bit rot")
    assert local_file(source, tmp_path / "cache") == local and local.read_bytes() == tiny_weights.read_bytes()


def test_file_changed_after_the_driver_hashed_it_is_refused_in_place(tiny_weights: Path) -> None:
    source = file_source(tiny_weights, "", "unused")
    tiny_weights.write_bytes(b"another file")
    with pytest.raises(StagedFileError, match=r"sha256 mismatch: .*changed after the driver hashed it"):
        local_file(source, "unused")


@pytest.mark.parametrize("weights_path, key", [("w.pth", "model.weights_path"), ("", "model.pretrained")])
def test_weights_absent_on_the_worker_name_the_key_and_the_file(tiny_weights: Path, tmp_path: Path,
                                                                weights_path: str, key: str) -> None:
    model = dataclasses.replace(Config().model, arch="resnet18", weights_path=weights_path)
    sha = _sha(tiny_weights)
    in_place = file_source(tiny_weights, "", "unused")
    staged = file_source(tiny_weights, "head:6379", str(tmp_path / "bucket"), pyarrow.fs.LocalFileSystem())
    tiny_weights.unlink()
    Path(staged.path).unlink()
    with pytest.raises(PretrainedWeightsError) as err:
        local_pretrained(in_place, model, tmp_path / "cache")
    assert str(err.value) == f"{key}: {tiny_weights} (sha256 {sha[:12]}...) does not exist on this node"
    with pytest.raises(PretrainedWeightsError) as err:
        local_pretrained(staged, model, tmp_path / "cache")
    assert str(err.value).startswith(f"{key}: {staged.path} (sha256 {sha[:12]}...) is not in the storage")
    assert "\n" not in str(err.value)


def test_driver_resolves_torchvisions_cached_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no ``model.weights_path`` the driver stages torchvision's cache file (fetched there
    once, hash-checked by torchvision)."""
    seen: dict[str, Any] = {}

    def fake(url: str, model_dir: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        seen.update(url=url, model_dir=model_dir)
        return resnet18(weights=None).state_dict()

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", fake)
    assert pretrained_file("resnet18", model_dir=str(tmp_path)) == tmp_path / "resnet18-f37072fd.pth"
    assert seen == {"url": "https://download.pytorch.org/models/resnet18-f37072fd.pth", "model_dir": str(tmp_path)}
    with pytest.raises(PretrainedWeightsError, match=r"model\.pretrained: arch 'tiny'"):
        pretrained_file("tiny")


def test_train_stage_stages_the_weights_for_a_cluster(r18_weights: tuple[Path, dict[str, torch.Tensor]],
                                                      tiny_shards: tuple[Path, Config], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage checks the file, stages it under ``<train.storage>/weights/<sha256>/`` and hands
    fit the staged reference (fit replaced: no Ray is started)."""
    from vireid.stages import train as train_stage

    path, _ = r18_weights
    shards, cfg = tiny_shards
    plain = config_to_dict(cfg)
    params = params_file(tmp_path / "params.yaml", plain | {
        "model": {**plain["model"], "arch": "resnet18", "pretrained": True, "weights_path": str(path)},
        "train": {**plain["train"], "ray_address": "head:6379", "storage": str(tmp_path / "storage")},
        "track": {**plain["track"], "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    handed: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_fit(*args: Any, **kwargs: Any) -> dict:
        handed.update(kwargs)
        raise Stop

    monkeypatch.setattr(train_stage, "fit", fake_fit)
    with pytest.raises(Stop):
        train_stage.main(["--params", str(params), "--shards", str(shards), "--out", str(tmp_path / "out")])
    sha = _sha(path)
    assert handed["weights_at"] == StagedFile(str(tmp_path / "storage" / "weights" / sha / "r18.pth"), sha)
    assert Path(handed["weights_at"].path).read_bytes() == path.read_bytes()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_ray_worker_refuses_a_damaged_staged_copy_in_one_line(tiny_shards: tuple[Path, Config], local_ray: None,
                                                              tmp_path: Path) -> None:
    """End to end on Ray Train: the staged reference reaches the worker, which fetches the
    copy, checks it and stops the run with its one-line error (before any training)."""
    from vireid.config import replace
    from vireid.training.ray_train import fit

    shards, base = tiny_shards
    path = tmp_path / "driver" / "r18.pth"
    path.parent.mkdir()
    torch.manual_seed(3)  # a hash no node has cached
    torch.save({k: torch.rand_like(v) if v.is_floating_point() else v
                for k, v in resnet18().state_dict().items()}, path)
    cfg = replace(base, model={"arch": "resnet18", "pretrained": True, "weights_path": str(path)},
                  train={"epochs": 1, "max_failures": 0, "iters_per_epoch": 1})
    staged = file_source(path, "head:6379", str(tmp_path / "bucket" / "weights"), pyarrow.fs.LocalFileSystem())
    Path(staged.path).write_bytes(b"damaged in the bucket")
    with pytest.raises(Exception) as err:  # noqa: PT011 - Ray wraps the worker's error
        fit(cfg, shards, tmp_path / "out", tmp_path / "storage", name="damaged", weights_at=staged)
    line = error_line(err.value)
    assert line is not None and line.startswith(f"error: model.weights_path: {staged.path}: sha256 mismatch: ")
    assert not (tmp_path / "out" / "model.pt").exists()
