"""The task: batch layout, named terms per configuration, gradients, memory update, embed."""

from __future__ import annotations

import numpy as np
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


@pytest.mark.parametrize("extra", [{}, {"fusion_layer": 2}, {"cross_consistency": True},
                                   {"memory_views": "other", "dual_probe": True, "fusion_layer": 3}])
def test_full_configuration_every_parameter_learns(extra: dict) -> None:
    task = make_task(model={**FULL, **extra})
    _sgd_step(task)  # the memory teacher exists from now on
    assert task.model.memory is not None and bool(task.model.memory.valid.any(1).all())
    losses = _step(task, seed=1)
    assert set(losses) == {"id", "tri", "dual", "fuse", "kd"} | ({"cc"} if extra.get("cross_consistency") else set())
    assert _trainable_without_gradient(task) == []
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


@torch.no_grad()
def _widen_classifiers(task: ReIDTask, gen: torch.Generator) -> None:
    """Redraw the classifiers with std 0.1 (d = 512: logits of std ~2 instead of AGW's ~0.02),
    so that the distillation term is far from 0 and from float32 rounding."""
    model = task.model
    for layer in (model.classifier, *(model.dual_classifiers or ())):
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.1)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _kd_by_hand(task: ReIDTask, g: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict[str, np.ndarray]]:
    """The distillation term of docs/method.md section 3 written out in float64 numpy from the
    model's outputs (BNNeck features ``g [B,d]`` of a ``[visible, infrared]`` batch), its
    classifiers and its memory: none of vireid's loss, fusion or memory code is used.

    Teachers: the fused pair feature h_k = a^v g^v_k + a^r g^r_k (a = sigmoid of the
    standardised self-owned score (W^own[y] - W^other[y]) * g, n-1 std, eps 1e-6) under the
    shared classifier, for both samples of pair k; the mean of the identity's valid memory
    slots under the shared classifier, only for identities with a slot.
    kd = 1/B sum_i sum_t w_ti T^2 KL(softmax(t_i / T) || softmax(s_i / T)),
    w_ti = max(0, softmax(t_i)[y_i] - softmax(s_i)[y_i]) (dynamic) or 1, 0 where t is absent.
    Returns kd and the weights per teacher.
    """
    model, cfg = task.model, task.cfg
    f64 = {"dtype": torch.float64}
    g, y = g.detach().to(**f64).numpy(), labels.numpy()
    w = model.classifier.weight.detach().to(**f64).numpy()
    b, n, t = len(y), len(y) // 2, float(cfg.temperature)
    student = g @ w.T
    teachers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if model.dual_classifiers is not None:
        w_v, w_r = (c.weight.detach().to(**f64).numpy() for c in model.dual_classifiers)

        def attention(s: np.ndarray) -> np.ndarray:
            z = (s - s.mean()) / (s.std(ddof=1) + 1e-6)
            return 1.0 / (1.0 + np.exp(-z))

        fused = np.stack([attention((w_v[y[k]] - w_r[y[k]]) * g[k]) * g[k]
                          + attention((w_r[y[k]] - w_v[y[k]]) * g[n + k]) * g[n + k] for k in range(n)])
        teachers["fuse"] = (np.concatenate([fused, fused]) @ w.T, np.ones(b, bool))
    if model.memory is not None:
        bank = model.memory.bank.to(**f64).numpy()  # [C,S,d]
        valid = model.memory.valid.numpy()  # [C,S]
        count = valid.sum(1)
        means = np.stack([bank[c][valid[c]].sum(0) / max(count[c], 1) for c in range(len(count))])
        teachers["mem"] = (means[y] @ w.T, count[y] > 0)
    log_p_s = np.log(_softmax(student / t))
    total, weights = 0.0, {}
    for name, (logits, present) in teachers.items():
        p_t = _softmax(logits / t)
        kl = (p_t * (np.log(p_t) - log_p_s)).sum(1)  # [B]
        if cfg.dynamic:
            weight = np.maximum(0.0, _softmax(logits)[np.arange(b), y] - _softmax(student)[np.arange(b), y])
        else:
            weight = np.ones(b)
        weights[name] = weight * present
        total += float((weights[name] * t * t * kl).sum())
    return total / b, weights


@pytest.mark.parametrize("dynamic", [True, False])
def test_distillation_term_equals_the_hand_computation(dynamic: bool) -> None:
    """Both teachers, temperature 3, one identity without memory slots."""
    task = make_task(model=FULL, loss={"temperature": 3.0, "dynamic": dynamic})
    gen = torch.Generator().manual_seed(5)
    model = task.model
    assert model.memory is not None and model.dual_classifiers is not None
    _widen_classifiers(task, gen)
    with torch.no_grad():
        # identities 0, 1, 2 hold 1, 2 and 5 views (ring of 4: the first view of 2 is dropped)
        model.memory.write(torch.randn(8, model.feat_dim, generator=gen),
                           torch.tensor([0, 1, 1, 2, 2, 2, 2, 2]))
    assert model.memory.valid.sum(1).tolist() == [1, 2, 4, 0]
    images, labels, mods = batch(p=4, k=2, seed=1)
    losses, state = task(images, labels, mods)
    kd, weights = _kd_by_hand(task, state.features, labels)
    assert kd > 0.05
    assert losses["kd"].item() == pytest.approx(kd, rel=1e-5, abs=1e-7)
    assert (weights["mem"][labels.numpy() == 3] == 0).all()  # identity 3: no memory teacher
    if dynamic:  # the clamp is exercised: some samples are weighted, some are not
        assert all((w > 0).any() and (w == 0).any() for w in weights.values())
    for name, weight in weights.items():
        assert state.diagnostics[f"kdw_{name}"].item() == pytest.approx(weight.mean(), rel=1e-5, abs=1e-7)


def test_distillation_without_teacher_is_refused() -> None:
    model = VIReIDModel(tiny_cfg(fusion=False, memory=False), 4)
    with pytest.raises(ValueError, match="loss.distill"):
        ReIDTask(model, LossConfig(distill=True))


def test_identity_without_memory_slot_gets_no_memory_teacher() -> None:
    # memory teacher only, static weight 1: kd weight of a sample = 1 iff its identity has a slot
    task = make_task(model={"fusion": False, "memory": True}, loss={"dynamic": False})
    _widen_classifiers(task, torch.Generator().manual_seed(3))  # kd well above float32 rounding
    losses, state = task(*batch(p=4, k=2))
    assert losses["kd"].item() == 0.0 and state.diagnostics["kdw_mem"].item() == 0.0
    task.after_step(state)
    assert task.model.memory is not None
    task.model.memory.reset()
    feats = torch.randn(1, task.model.feat_dim)
    task.model.memory.write(feats, torch.tensor([0]))  # only identity 0 of 4
    images, labels, mods = batch(p=4, k=2, seed=2)
    losses, state = task(images, labels, mods)
    assert state.diagnostics["kdw_mem"].item() == pytest.approx(0.25)
    kd, weights = _kd_by_hand(task, state.features, labels)
    assert weights["mem"].tolist() == [1.0, 1.0, 0, 0, 0, 0, 0, 0] * 2  # identity 0's 2 + 2 views
    assert kd > 0 and losses["kd"].item() == pytest.approx(kd, rel=1e-5)


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
