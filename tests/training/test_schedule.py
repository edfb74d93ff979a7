"""AGW optimiser groups and the per-epoch learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vireid.config import ConfigError, TrainConfig
from vireid.training.schedule import (
    batch_plan,
    build_optimizer,
    build_scheduler,
    lr_factor,
    param_groups,
    scaled_lrs,
)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4))
        self.bnneck = nn.BatchNorm1d(4)
        self.classifier = nn.Linear(4, 2, bias=False)


def test_lr_factor_agw_defaults() -> None:
    # AGW: warm-up over 10 epochs reaching 1 at epoch 10 (index 9), x0.1 at 20, x0.01 at 50
    f = [lr_factor(e, 10, (20, 50)) for e in range(80)]
    assert f[0] == pytest.approx(0.1)
    assert f[4] == pytest.approx(0.5)
    assert f[9] == pytest.approx(1.0)
    assert f[10:20] == pytest.approx([1.0] * 10)
    assert f[20:50] == pytest.approx([0.1] * 30)
    assert f[50:80] == pytest.approx([0.01] * 30)


def test_lr_factor_no_warmup_and_milestone_inside_warmup() -> None:
    assert lr_factor(0, 0, ()) == 1.0
    assert lr_factor(7, 0, (3,)) == pytest.approx(0.1)
    # a milestone during warm-up multiplies the ramp
    assert lr_factor(2, 4, (2,)) == pytest.approx(0.75 * 0.1)
    with pytest.raises(ValueError, match="epoch"):
        lr_factor(-1, 2, ())


def test_param_groups_split_backbone_from_new_layers() -> None:
    net = _Net()
    groups = param_groups(net, lr=0.1, backbone_lr=0.01)
    by_name = {g["name"]: g for g in groups}
    backbone_ids = {id(p) for p in net.backbone.parameters()}
    assert {id(p) for p in by_name["backbone"]["params"]} == backbone_ids
    new = {id(p) for p in by_name["new"]["params"]}
    assert new == {id(p) for n, p in net.named_parameters() if not n.startswith("backbone.")}
    assert by_name["backbone"]["lr"] == 0.01 and by_name["new"]["lr"] == 0.1


def test_param_groups_uses_the_models_own_groups() -> None:
    from vireid.config import ModelConfig
    from vireid.modeling import VIReIDModel

    model = VIReIDModel(ModelConfig(arch="tiny", pretrained=False), num_classes=4)
    groups = param_groups(model, lr=0.1, backbone_lr=0.01)
    lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert all(lrs[id(p)] == 0.01 for p in model.backbone.parameters())
    assert lrs[id(model.classifier.weight)] == 0.1
    assert lrs[id(model.bnneck.weight)] == 0.1
    assert id(model.bnneck.bias) not in lrs  # frozen BNNeck bias is not optimised


def test_param_groups_refuses_a_model_without_a_backbone() -> None:
    with pytest.raises(TypeError, match="backbone"):
        param_groups(nn.Linear(2, 2), 0.1, 0.01)


def test_optimizer_and_scheduler_values_per_epoch() -> None:
    cfg = TrainConfig(lr=0.1, backbone_lr=0.01, momentum=0.9, weight_decay=5e-4,
                      warmup_epochs=2, milestones=(3, 5), epochs=6)
    net = _Net()
    opt = build_optimizer(net, cfg)
    assert isinstance(opt, torch.optim.SGD)
    for g in opt.param_groups:
        assert g["nesterov"] is True and g["momentum"] == 0.9 and g["weight_decay"] == 5e-4
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(cfg.epochs):
        seen.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    expected = [0.5, 1.0, 1.0, 0.1, 0.1, 0.01]
    for e, f in enumerate(expected):
        assert math.isclose(seen[e]["new"], 0.1 * f, rel_tol=1e-9), (e, seen[e])
        assert math.isclose(seen[e]["backbone"], 0.01 * f, rel_tol=1e-9), (e, seen[e])


def test_scheduler_state_round_trip_continues_the_schedule() -> None:
    cfg = TrainConfig(warmup_epochs=3, milestones=(4,), epochs=6)
    net = _Net()
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, cfg)
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(_Net(), cfg)
    sched2 = build_scheduler(opt2, cfg)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(cfg.backbone_lr * lr_factor(4, 3, (4,)))


@pytest.mark.parametrize(("scaling", "world", "expected"), [
    ("none", 1, (0.1, 0.01)), ("none", 4, (0.1, 0.01)),
    ("linear", 1, (0.1, 0.01)), ("linear", 4, (0.4, 0.04))])
def test_lr_scaling_multiplies_both_rates_by_the_world_size(scaling: str, world: int,
                                                            expected: tuple[float, float]) -> None:
    cfg = TrainConfig(lr=0.1, backbone_lr=0.01, lr_scaling=scaling)
    assert scaled_lrs(cfg, world) == pytest.approx(expected)
    opt = build_optimizer(_Net(), cfg, world)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(
        {"new": expected[0], "backbone": expected[1]})


def test_linear_scaling_keeps_the_warmup_toward_the_scaled_rate() -> None:
    cfg = TrainConfig(lr=0.1, backbone_lr=0.01, lr_scaling="linear", warmup_epochs=4, milestones=(5,), epochs=6)
    opt = build_optimizer(_Net(), cfg, 4)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(cfg.epochs):
        seen.append({g["name"]: g["lr"] for g in opt.param_groups}["new"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.04])  # 0.4 * (e+1)/4, then x0.1 at 5


def test_lr_scaling_is_checked() -> None:
    from vireid.config import Config, config_from_dict, config_to_dict

    plain = config_to_dict(Config())
    plain["train"]["lr_scaling"] = "sqrt"
    with pytest.raises(ConfigError, match=r"train\.lr_scaling: must be one of \['none', 'linear'\]"):
        config_from_dict(plain)
    assert TrainConfig().lr_scaling == "none"


def test_batch_plan_line() -> None:
    cfg = TrainConfig(identities_per_batch=8, instances_per_modality=4, lr=0.1, backbone_lr=0.01,
                      lr_scaling="linear")
    line = batch_plan(cfg, 4, 172)
    assert line == ("data parallel: world size 4, per-worker batch 64 (P=8 x K=4 x 2 modalities), "
                    "global batch 256, 172 steps per epoch, lr 0.4 / backbone_lr 0.04 "
                    "(train.lr_scaling: linear)")
    assert "global batch 64," in batch_plan(TrainConfig(), 1, 10) and "lr 0.1 " in batch_plan(TrainConfig(), 1, 10)
