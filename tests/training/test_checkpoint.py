"""Checkpoints: round trips, weights_only loading, refusal of mismatched checkpoints."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from vireid.config import config_to_dict
from vireid.training.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_model,
    load_train_state,
    read_model_file,
    save_model,
)
from vireid.training.loop import Trainer


@pytest.fixture(scope="module")
def trained(tiny_shards: tuple[Path, object], tmp_path_factory: pytest.TempPathFactory):
    """A Trainer after one epoch (memory written) and its saved state/model files."""
    shards, cfg = tiny_shards
    trainer = Trainer(cfg, shards)
    trainer.run_epoch()
    out = tmp_path_factory.mktemp("ckpt")
    trainer.save_state(out / "train_state.pt")
    trainer.save_model(out / "model.pt")
    return trainer, out


def _equal_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_state_round_trip(trained, tiny_shards) -> None:
    trainer, out = trained
    shards, cfg = tiny_shards
    assert trainer.model.memory is not None and bool(trainer.model.memory.valid.any())
    state = load_train_state(out / "train_state.pt", **trainer.expected())
    fresh = Trainer(cfg, shards)
    assert not _equal_state(fresh.model.state_dict(), trainer.model.state_dict())
    fresh.restore(state)
    assert fresh.epoch == 1 == trainer.epoch
    assert _equal_state(fresh.model.state_dict(), trainer.model.state_dict())  # incl. memory buffers
    mem_keys = [k for k in fresh.model.state_dict() if k.startswith("memory.")]
    assert mem_keys, "the memory buffers are part of the state dict"
    assert fresh.scheduler.state_dict() == trainer.scheduler.state_dict()
    assert [g["lr"] for g in fresh.optimizer.param_groups] == [g["lr"] for g in trainer.optimizer.param_groups]
    opt_a, opt_b = fresh.optimizer.state_dict()["state"], trainer.optimizer.state_dict()["state"]
    assert opt_a.keys() == opt_b.keys() and opt_a
    assert all(torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"]) for k in opt_a)
    assert state["sampler"] == {"seed": cfg.train.seed, "epoch": 1}
    assert fresh.sampler.epoch == 1
    assert fresh.history == trainer.history
    assert fresh.best is not None and fresh.best.epoch == 1
    assert state["meta"]["config"] == config_to_dict(cfg)


def test_resumed_epoch_equals_uninterrupted(trained, tiny_shards) -> None:
    """Epoch 2 after restoring epoch 1 gives the same weights as running on (RNG-free resume)."""
    trainer, out = trained
    shards, cfg = tiny_shards
    resumed = Trainer(cfg, shards)
    resumed.restore(load_train_state(out / "train_state.pt"))
    torch.manual_seed(12345)  # whatever the global RNG holds, the epoch reseeds itself
    resumed.run_epoch()
    straight = Trainer(cfg, shards)
    straight.run_epoch()
    straight.run_epoch()
    assert _equal_state(resumed.model.state_dict(), straight.model.state_dict())
    assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]


def test_weights_only_loading_refuses_pickled_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "vireid-model/1", "meta": {}, "model": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: not loadable with weights_only"):
        read_model_file(path)


def test_not_a_checkpoint_and_missing_file(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="format is None, expected 'vireid-model/1'"):
        read_model_file(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        read_model_file(tmp_path / "missing.pt")


@pytest.mark.parametrize(("field", "value"), [
    ("arch", "resnet50"), ("dataset", "regdb"), ("num_classes", 99), ("image_height", 288),
    ("image_width", 144),
])
def test_mismatch_is_refused_naming_path_and_field(trained, field: str, value: object) -> None:
    trainer, out = trained
    expected = {**trainer.expected(), field: value}
    for path, loader in ((out / "model.pt", read_model_file), (out / "train_state.pt", load_train_state)):
        with pytest.raises(CheckpointMismatchError) as err:
            loader(path, **expected)
        msg = str(err.value)
        assert str(path) in msg and field in msg and repr(value) in msg
        assert err.value.field == field


def test_load_model_for_inference(trained) -> None:
    trainer, out = trained
    model, meta = load_model(out / "model.pt", "cpu", arch="tiny", dataset="sysu")
    assert not model.training
    assert meta["selected_epoch"] == 1 and meta["num_classes"] == trainer.num_classes
    assert meta["identity_map"] == trainer.shards.manifest["identity_maps"]["train"]
    assert meta["image_height"] == 64 and meta["image_width"] == 32
    assert set(meta["val_metrics"]) >= {"val_mAP", "val_rank1"}
    assert "infrared" in meta["selection"]
    assert _equal_state(model.state_dict(), trainer.best.model)
    x = torch.zeros(2, 3, 64, 32)
    assert model.embed(x, torch.tensor([0, 1])).shape == (2, trainer.model.feat_dim)
    with pytest.raises(CheckpointMismatchError, match="arch"):
        load_model(out / "model.pt", "cpu", arch="resnet18")


def test_load_model_refuses_weights_of_another_shape(trained, tmp_path: Path) -> None:
    trainer, out = trained
    obj = read_model_file(out / "model.pt")
    meta = dict(obj["meta"], num_classes=obj["meta"]["num_classes"] + 1)
    save_model(tmp_path / "bad.pt", obj["model"], meta)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "bad.pt")


def test_save_is_atomic(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, out = trained
    target = tmp_path / "model.pt"
    trainer.save_model(target)
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("vireid.io.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_model(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
