"""AGW optimiser and learning-rate schedule (docs/method.md, "what is tuned").

SGD with nesterov momentum and weight decay, two parameter groups (the pretrained backbone
at ``train.backbone_lr``; every new layer -- classifiers, BNNeck, fusion -- at ``train.lr``),
and a per-epoch multiplier: linear warm-up over ``warmup_epochs``, then x0.1 at each
milestone. The scheduler is a :class:`torch.optim.lr_scheduler.LambdaLR` stepped once per
epoch, so after ``e`` steps the learning rate is ``base_lr * lr_factor(e, ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vireid.config import TrainConfig


def lr_factor(epoch: int, warmup_epochs: int, milestones: Sequence[int]) -> float:
    """Multiplier of the base learning rate during 0-based ``epoch``.

    Warm-up: epoch ``e < warmup_epochs`` trains at ``(e + 1) / warmup_epochs`` (AGW's linear
    ramp, reaching 1 at the last warm-up epoch); afterwards ``0.1 ** (number of milestones
    <= epoch)``.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    warm = (epoch + 1) / warmup_epochs if epoch < warmup_epochs else 1.0
    decay = 0.1 ** sum(1 for m in milestones if epoch >= m)
    return warm * decay


def backbone_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) of the pretrained backbone's parameters.

    The model marks its backbone either by a ``backbone_parameter_names()`` method or by a
    ``backbone`` submodule; everything else is a new layer.
    """
    method = getattr(model, "backbone_parameter_names", None)
    if callable(method):
        return set(method())
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return {f"backbone.{n}" for n, _ in backbone.named_parameters()}
    raise TypeError(
        f"{type(model).__name__} exposes neither backbone_parameter_names() nor a backbone "
        "submodule, so the backbone and new-layer learning rates cannot be told apart"
    )


def param_groups(model: nn.Module, lr: float, backbone_lr: float) -> list[dict]:
    """Two SGD parameter groups: the backbone at ``backbone_lr``, every new layer at ``lr``.

    Uses the model's own ``param_groups(lr, backbone_lr)`` when it has one (VIReIDModel),
    else splits by :func:`backbone_parameter_names`. Empty groups are dropped.
    """
    own = getattr(model, "param_groups", None)
    if callable(own):
        return [g for g in own(lr, backbone_lr) if g["params"]]
    names = backbone_parameter_names(model)
    backbone, new = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (backbone if name in names else new).append(p)
    groups = [{"params": backbone, "lr": backbone_lr, "name": "backbone"},
              {"params": new, "lr": lr, "name": "new"}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD, nesterov momentum ``cfg.momentum``, weight decay, backbone/new-layer groups.

    The update runs as one fused kernel when the parameters are on CUDA, as torch's
    multi-tensor (foreach) implementation elsewhere; the arithmetic is the same.
    """
    cuda = any(p.is_cuda for p in model.parameters())
    return torch.optim.SGD(
        param_groups(model, cfg.lr, cfg.backbone_lr),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
        fused=True if cuda else None,
        foreach=None,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch :class:`LambdaLR` applying :func:`lr_factor` to every group's base lr."""
    warmup, milestones = cfg.warmup_epochs, tuple(cfg.milestones)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, warmup, milestones)
    )
