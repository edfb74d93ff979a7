"""The task: batch layout, named terms per configuration, gradients, memory update, embed."""

from __future__ import annotations

import pytest
import torch

from tests.modeling.helpers import batch, make_task, tiny_cfg
from vireid.config import LossConfig
from vireid.modeling import ReIDTask, VIReIDModel, check_batch_layout

FULL = {"fusion": True, "memory": True}


def _step(task: ReIDTask, seed: int = 0) -> dict[str, torch.Tensor]:
    task.zero_grad(set_to_none=True)
    losses, state = task(*batch(seed=seed))
    total = sum(losses.values())
    assert isinstance(total, torch.Tensor)
    total.backward()
    assert all(torch.isfinite(v) for v in losses.values()), losses
    return losses


def _sgd_step(task: ReIDTask, seed: int = 7) -> None:
    """One plain SGD update: the non-local blocks' zero-initialised output BN passes no
    gradient to theta/phi/g until its weight has moved once (as in AGW)."""
    task.zero_grad(set_to_none=True)
    losses, state = task(*batch(seed=seed))
    task.total(losses).backward()
    with torch.no_grad():
        for p in task.model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    task.after_step(state)


def _trainable_without_gradient(task: ReIDTask) -> list[str]:
    return [n for n, p in task.model.named_parameters()
            if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all()
                                    or p.grad.abs().sum() == 0)]


def test_layout_is_checked() -> None:
    images, labels, mods = batch(p=3, k=2)
    assert check_batch_layout(labels, mods) == 6
    with pytest.raises(ValueError, match="batch layout"):
        check_batch_layout(labels, mods.flip(0))  # infrared block first
    shuffled = labels.clone()
    shuffled[6:] = shuffled[6:].flip(0)  # infrared block in another identity order
    with pytest.raises(ValueError, match="same label order"):
        make_task()(images, shuffled, mods)
    with pytest.raises(ValueError, match="batch layout"):
        check_batch_layout(labels[:-1], mods[:-1])  # odd batch


def test_full_configuration_every_parameter_learns() -> None:
    task = make_task(model=FULL)
    _sgd_step(task)  # the memory teacher exists from now on
    assert task.model.memory is not None and bool(task.model.memory.valid.any(1).all())
    losses = _step(task, seed=1)
    assert set(losses) == {"id", "tri", "dual", "fuse", "kd"}
    assert _trainable_without_gradient(task) == []
    assert losses["kd"].item() > 0
    bnneck = task.model.bnneck
    assert not bnneck.bias.requires_grad and bnneck.bias.grad is None
    assert torch.equal(bnneck.bias, torch.zeros_like(bnneck.bias))


@pytest.mark.parametrize(
    ("model", "loss", "terms"),
    [
        ({"fusion": False, "memory": False}, {"distill": False}, {"id", "tri"}),
        ({"fusion": False, "memory": False}, {"distill": False, "triplet": "none"}, {"id"}),
        ({"fusion": True, "memory": False}, {"distill": False, "triplet": "wrt"}, {"id", "tri", "dual", "fuse"}),
        ({"fusion": True, "memory": False}, {"distill": True}, {"id", "tri", "dual", "fuse", "kd"}),
        ({"fusion": False, "memory": True}, {"distill": True, "dynamic": False}, {"id", "tri", "kd"}),
    ],
)
def test_switched_off_parts_do_not_exist(model: dict, loss: dict, terms: set[str]) -> None:
    task = make_task(model=model, loss=loss)
    _sgd_step(task)
    losses = _step(task, seed=1)
    assert set(losses) == terms
    assert (task.model.dual_classifiers is not None) == model["fusion"]
    assert (task.model.memory is not None) == model["memory"]
    names = [n for n, _ in task.model.named_parameters()] + list(task.model.state_dict())
    if not model["fusion"]:
        assert not any(n.startswith("dual_classifiers") for n in names)
    if not model["memory"]:
        assert not any(n.startswith("memory") for n in names)
    assert _trainable_without_gradient(task) == []


def test_distillation_without_teacher_is_refused() -> None:
    model = VIReIDModel(tiny_cfg(fusion=False, memory=False), 4)
    with pytest.raises(ValueError, match="loss.distill"):
        ReIDTask(model, LossConfig(distill=True))


def test_identity_without_memory_slot_gets_no_memory_teacher() -> None:
    # memory teacher only, static weight 1: kd weight of a sample = 1 iff its identity has a slot
    task = make_task(model={"fusion": False, "memory": True}, loss={"dynamic": False})
    losses, state = task(*batch(p=4, k=2))
    assert losses["kd"].item() == 0.0 and state.diagnostics["kdw_mem"].item() == 0.0
    task.after_step(state)
    assert task.model.memory is not None
    task.model.memory.reset()
    feats = torch.randn(1, task.model.feat_dim)
    task.model.memory.write(feats, torch.tensor([0]))  # only identity 0 of 4
    losses, state = task(*batch(p=4, k=2, seed=2))
    assert state.diagnostics["kdw_mem"].item() == pytest.approx(0.25)
    assert losses["kd"].item() > 0


def test_after_step_writes_every_sample_of_both_modalities() -> None:
    task = make_task(model={**FULL, "memory_size": 8})
    images, labels, mods = batch(p=2, k=2)
    _, state = task(images, labels, mods)
    assert state.features.shape == (8, task.model.feat_dim) and not state.features.requires_grad
    task.after_step(state)
    mem = task.model.memory
    assert mem is not None
    assert mem.valid.sum().item() == 8 and mem.pointer.tolist() == [4, 4, 0, 0]
    # identity 0's slots hold its views interleaved: v0, r0, v1, r1
    torch.testing.assert_close(mem.bank[0, :4], state.features[[0, 4, 1, 5]])
    assert not mem.valid[0, 4:].any()


def test_embed_is_normalised_inference_path_in_eval_mode() -> None:
    task = make_task(model=FULL)
    model = task.model.eval()
    images, _, mods = batch(p=2, k=1)
    emb = model.embed(images, mods)
    assert emb.shape == (4, model.feat_dim) and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    with torch.no_grad():
        g = model(images, mods)["g"]
    torch.testing.assert_close(emb, torch.nn.functional.normalize(g, dim=1))


def test_param_groups_cover_every_trainable_parameter_once() -> None:
    model = make_task(model=FULL).model
    groups = model.param_groups(lr=0.1, backbone_lr=0.01)
    ids = [id(p) for grp in groups for p in grp["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert [g["lr"] for g in groups] == [0.01, 0.1]
