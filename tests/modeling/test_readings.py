"""The cross-modal readings of docs/method.md (switches; today's reading stays the default):
a) memory teacher from the other modality's views, b) feature-level inference,
c) dual classifiers as probes, d) mid-level fusion, e) late distillation, f) cross-classifier
consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.modeling.helpers import batch, make_task
from vireid.config import Config, ConfigError, config_from_dict, config_to_dict
from vireid.modeling import losses as L

FULL = {"fusion": True, "memory": True}


def test_other_modality_memory_teacher_is_the_mean_of_the_other_modalitys_views() -> None:
    task = make_task(model={**FULL, "memory_views": "other", "memory_size": 4}, loss={"dynamic": False})
    mem = task.model.memory
    assert mem is not None and mem.bank.shape[0] == 2 * 4  # a ring per (identity, modality)
    images, labels, mods = batch(p=4, k=2)  # 8 visible then 8 infrared
    _, state = task(images, labels, mods)
    task.after_step(state)
    g = state.features
    # identity 1: visible rows 2,3 -> ring 2; infrared rows 10,11 -> ring 3; each ring one modality
    assert mem.valid[2].sum() == 2 and mem.valid[3].sum() == 2
    torch.testing.assert_close(mem.bank[2, :2], g[[2, 3]])
    torch.testing.assert_close(mem.bank[3, :2], g[[10, 11]])
    m, has = mem.means()
    # a visible sample of identity 1 is taught by its identity's infrared views, and the reverse
    torch.testing.assert_close(m[2 * 1 + 1], g[[10, 11]].mean(0))
    torch.testing.assert_close(m[2 * 1 + 0], g[[2, 3]].mean(0))
    # the memory teacher's logits in the next step are W times the other modality's mean
    losses, state2 = task(images, labels, mods)
    w = task.model.classifier.weight.detach()
    conf_by_hand = []
    for i in range(16):
        row = 2 * int(labels[i]) + 1 - int(mods[i])
        conf_by_hand.append(torch.softmax(F.linear(m[row], w), 0)[labels[i]].item())
    assert state2.diagnostics["conf_mem"].item() == pytest.approx(float(np.mean(conf_by_hand)), rel=1e-5)


def test_both_views_memory_is_unchanged_by_default() -> None:
    task = make_task(model=FULL)
    assert task.model.cfg.memory_views == "both" and task.model.memory is not None
    assert task.model.memory.bank.shape[0] == 4  # one ring per identity, as before


def _shared_grad_of(term: str, model: dict) -> float:
    task = make_task(model={**FULL, **model}, loss={"distill": False})
    losses, _ = task(*batch(seed=3))
    losses[term].backward()
    grads = [p.grad for p in task.model.backbone.parameters() if p.grad is not None]
    return float(sum(gr.abs().sum() for gr in grads)) if grads else 0.0


def test_dual_probes_train_their_classifiers_but_do_not_move_the_shared_layers() -> None:
    assert _shared_grad_of("dual", {}) > 0  # today's reading: the dual term reaches the backbone
    assert _shared_grad_of("dual", {"dual_probe": True}) == 0.0
    task = make_task(model={**FULL, "dual_probe": True}, loss={"distill": False})
    losses, _ = task(*batch(seed=3))
    losses["dual"].backward()
    assert task.model.dual_classifiers is not None
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in task.model.dual_classifiers)


def test_inference_loss_by_hand() -> None:
    g = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[4.0, 3.0], [0.0, 5.0], [0.0, 1.0]])
    # 2 - 2 cos: (2 - 2 * 24/25), (2 - 0), (2 - 2)
    assert L.inference_loss(g, t, None).item() == pytest.approx((0.08 + 2.0 + 0.0) / 3, rel=1e-6)
    assert L.inference_loss(g, t, torch.tensor([True, False, True])).item() == pytest.approx(0.08 / 3, rel=1e-6)
    g.requires_grad_(True)
    t.requires_grad_(True)
    L.inference_loss(g, t, None).backward()
    assert t.grad is None and g.grad is not None  # the target is detached


@pytest.mark.parametrize("target", ["memory", "fused"])
def test_infer_term_pulls_g_toward_the_detached_target(target: str) -> None:
    task = make_task(model={**FULL, "memory_views": "other"}, loss={"infer": target})
    images, labels, mods = batch(p=4, k=2)
    losses, state = task(images, labels, mods)
    task.after_step(state)
    losses, state = task(images, labels, mods)
    assert "infer" in losses and 0.0 < losses["infer"].item() <= 4.0
    task.total(losses).backward()
    assert all(p.grad is not None for p in task.model.backbone.parameters() if p.requires_grad)


def test_late_terms_off_leaves_out_kd_and_infer() -> None:
    task = make_task(model={**FULL, "memory_views": "other"}, loss={"infer": "memory"})
    task.late_terms = False
    losses, state = task(*batch())
    assert set(losses) == {"id", "tri", "dual", "fuse"} and not any(k.startswith("kdw_") for k in state.diagnostics)
    task.late_terms = True
    assert {"kd", "infer"} <= set(task(*batch())[0])


def _config(**loss: object) -> Config:
    plain = config_to_dict(Config())
    plain["loss"].update(loss)
    return config_from_dict(plain)


def test_infer_needs_its_teacher_and_distill_start_is_a_fraction() -> None:
    plain = config_to_dict(Config())
    plain["model"]["memory"] = False
    plain["loss"]["infer"] = "memory"
    with pytest.raises(ConfigError, match=r"loss\.infer.*model\.memory"):
        config_from_dict(plain)
    with pytest.raises(ConfigError, match=r"loss\.distill_start"):
        _config(distill_start=1.0)


def test_mid_level_fusion_h_is_the_pairs_averaged_layer_maps_through_the_rest() -> None:
    task = make_task(model={**FULL, "fusion_layer": 2}, loss={"distill": False})
    model = task.model.eval()  # BatchNorm on running statistics: h can be recomputed by hand
    images, labels, mods = batch(p=4, k=2)
    n = labels.shape[0] // 2
    out = model(images, mods, split=n, fuse_mid=True)
    plain = model(images, mods, split=n)
    torch.testing.assert_close(out["f"], plain["f"])  # the single-image features are unchanged
    torch.testing.assert_close(out["g"], plain["g"])
    bb = model.backbone
    y = bb.stem_split(images, n)
    mid = bb.layer2(bb.layer1(y))
    by_hand = model.bnneck(model.pool(bb.layer4(bb.layer3(0.5 * (mid[:n] + mid[n:])))))
    torch.testing.assert_close(out["h"], by_hand)
    assert out["h"].shape == (n, model.feat_dim)


def test_mid_level_fusion_fuse_term_is_ce_of_h_and_every_parameter_learns() -> None:
    task = make_task(model={**FULL, "fusion_layer": 3}, loss={"distill": True})
    images, labels, mods = batch(p=4, k=2, seed=5)
    n = labels.shape[0] // 2
    task(images, labels, mods)  # fill nothing: memory is written in after_step only
    losses, state = task(images, labels, mods)
    h = task.model(images, mods, split=n, fuse_mid=True)["h"]  # train mode: the same batch statistics
    expected = F.cross_entropy(F.linear(h, task.model.classifier.weight), labels[:n])
    assert losses["fuse"].item() == pytest.approx(expected.item(), rel=1e-5)
    # the attention weights W^v, W^r no longer shape h: the fuse term leaves them without gradient
    losses["fuse"].backward()
    assert task.model.dual_classifiers is not None
    assert all(c.weight.grad is None for c in task.model.dual_classifiers)
    assert task.model.backbone.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.backbone.stems[1].parameters()
               if p.ndim > 1)  # both stems feed the fused maps


def test_cross_consistency_by_hand_and_the_ema_moves_after_the_step() -> None:
    task = make_task(model={**FULL, "cross_consistency": True, "cc_update": 0.25}, loss={"distill": False})
    model = task.model
    assert model.dual_ema is not None and model.dual_classifiers is not None
    assert "dual_ema" in model.state_dict()  # saved with checkpoints, restored on resume
    w_v, w_r = (c.weight for c in model.dual_classifiers)
    with torch.no_grad():  # make the EMA copies differ from the live classifiers
        model.dual_ema.add_(0.01 * torch.randn_like(model.dual_ema))
    ema_before = model.dual_ema.clone()
    images, labels, mods = batch(p=4, k=2, seed=2)
    n = labels.shape[0] // 2
    losses, state = task(images, labels, mods)
    g = state.features
    own = torch.cat([F.linear(g[:n], w_v), F.linear(g[n:], w_r)])  # visible by W^v, infrared by W^r
    other = torch.cat([F.linear(g[:n], ema_before[1]), F.linear(g[n:], ema_before[0])])  # the other's EMA
    p, q = torch.softmax(own, 1), torch.softmax(other, 1)
    by_hand = (p * (p.log() - q.log())).sum(1).mean()
    assert losses["cc"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    kl = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(other, 1), p)  # MPANet's call
    assert losses["cc"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert task.total(losses).item() == pytest.approx(
        sum(v.item() for k, v in losses.items() if k != "cc") + 2.5 * losses["cc"].item(), rel=1e-5)
    losses["cc"].backward()
    assert model.dual_ema.grad is None and w_v.grad.abs().sum() > 0 and w_r.grad.abs().sum() > 0
    assert model.backbone.layer4[0].conv1.weight.grad.abs().sum() > 0  # through p, into g
    task.after_step(state)
    torch.testing.assert_close(model.dual_ema[0], 0.75 * ema_before[0] + 0.25 * w_v.detach())
    torch.testing.assert_close(model.dual_ema[1], 0.75 * ema_before[1] + 0.25 * w_r.detach())


def test_readings_d_and_f_are_off_by_default_and_checked() -> None:
    task = make_task(model=FULL)
    assert task.model.dual_ema is None and "dual_ema" not in task.model.state_dict()
    assert "cc" not in task(*batch())[0]
    plain = config_to_dict(Config())
    assert plain["model"]["fusion_layer"] == 0 and plain["model"]["cross_consistency"] is False
    for key, value, match in (("fusion_layer", 1, r"model\.fusion_layer.*0, 2 or 3"),
                              ("cc_update", 0.0, r"model\.cc_update")):
        bad = config_to_dict(Config())
        bad["model"][key] = value
        with pytest.raises(ConfigError, match=match):
            config_from_dict(bad)
    for key, value in (("fusion_layer", 2), ("cross_consistency", True)):
        bad = config_to_dict(Config())
        bad["model"].update({"fusion": False, key: value})
        with pytest.raises(ConfigError, match=rf"model\.{key}.*model\.fusion"):
            config_from_dict(bad)


def test_mid_level_fusion_forward_names_what_it_needs() -> None:
    images, labels, mods = batch(p=2, k=2)
    n = labels.shape[0] // 2
    with pytest.raises(ValueError, match=r"model\.fusion_layer 2 or 3 \(got 0\)"):
        make_task(model=FULL).model(images, mods, split=n, fuse_mid=True)
    model = make_task(model={**FULL, "fusion_layer": 2}).model
    with pytest.raises(ValueError, match=r"\[visible block, infrared block\] batch \(split None of 8\)"):
        model(images, mods, fuse_mid=True)
