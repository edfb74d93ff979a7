"""AGW optimiser and learning-rate schedule (docs/method.md, "what is tuned").

SGD with nesterov momentum and weight decay, two parameter groups (the pretrained backbone
at ``train.backbone_lr``; every new layer -- classifiers, BNNeck, fusion -- at ``train.lr``),
and a per-epoch multiplier: linear warm-up over ``warmup_epochs``, then x0.1 at each
milestone. The scheduler is a :class:`torch.optim.lr_scheduler.LambdaLR` stepped once per
epoch, so after ``e`` steps the learning rate is ``base_lr * lr_factor(e, ...)``.

Data parallelism: ``world_size`` workers each take a batch of ``2*P*K`` images per step, so
one optimiser step sees ``world_size * 2*P*K`` images (the global batch). With
``train.lr_scaling: linear`` the base rates are multiplied by ``world_size``
(:func:`scaled_lrs`; the warm-up then ramps toward the scaled rates); with ``none`` they are
used as given.
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


def scaled_lrs(cfg: TrainConfig, world_size: int) -> tuple[float, float]:
    """``(lr, backbone_lr)`` after ``train.lr_scaling`` for ``world_size`` data-parallel
    workers: as given under ``none``, both times ``world_size`` under ``linear``."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    factor = world_size if cfg.lr_scaling == "linear" else 1
    return cfg.lr * factor, cfg.backbone_lr * factor


def batch_plan(cfg: TrainConfig, world_size: int, steps_per_epoch: int) -> str:
    """One log line: workers, per-worker and global batch, steps per epoch, effective lr."""
    p, k = cfg.identities_per_batch, cfg.instances_per_modality
    per_worker = 2 * p * k  # P identities x K images x 2 modalities
    lr, backbone_lr = scaled_lrs(cfg, world_size)
    return (f"data parallel: world size {world_size}, per-worker batch {per_worker} "
            f"(P={p} x K={k} x 2 modalities), global batch {world_size * per_worker}, "
            f"{steps_per_epoch} steps per epoch, lr {lr:g} / backbone_lr {backbone_lr:g} "
            f"(train.lr_scaling: {cfg.lr_scaling})")


def build_optimizer(model: nn.Module, cfg: TrainConfig, world_size: int = 1) -> torch.optim.SGD:
    """SGD, nesterov momentum ``cfg.momentum``, weight decay, backbone/new-layer groups at
    :func:`scaled_lrs` for ``world_size`` workers.

    The update runs as one fused kernel when the parameters are on CUDA, as torch's
    multi-tensor (foreach) implementation elsewhere; the arithmetic is the same.
    """
    cuda = any(p.is_cuda for p in model.parameters())
    lr, backbone_lr = scaled_lrs(cfg, world_size)
    return torch.optim.SGD(
        param_groups(model, lr, backbone_lr),
        lr=lr,
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
