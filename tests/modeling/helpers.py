"""Small builders shared by the modeling tests: tiny configs and sampler-layout batches."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vireid.config import LossConfig, ModelConfig
from vireid.modeling import ReIDTask, VIReIDModel

H, W = 64, 32


def tiny_cfg(**kw: Any) -> ModelConfig:
    """Tiny two-stream ResNet from scratch, small memory; overrides in ``kw``."""
    base: dict[str, Any] = {"arch": "tiny", "pretrained": False, "memory_size": 4}
    base.update(kw)
    return ModelConfig(**base)


def layout(p: int, k: int) -> tuple[Tensor, Tensor]:
    """Labels and modalities in the sampler's ``[visible block, infrared block]`` order."""
    block = torch.arange(p).repeat_interleave(k)  # [P*K]
    labels = torch.cat([block, block])
    modalities = torch.cat([torch.zeros(p * k), torch.ones(p * k)]).long()
    return labels, modalities


def batch(p: int = 4, k: int = 2, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random images ``[2PK,3,64,32]`` with sampler-layout labels and modalities."""
    gen = torch.Generator().manual_seed(seed)
    labels, modalities = layout(p, k)
    return torch.randn(labels.shape[0], 3, H, W, generator=gen), labels, modalities


def make_task(num_classes: int = 4, model: dict[str, Any] | None = None,
              loss: dict[str, Any] | None = None, seed: int = 0) -> ReIDTask:
    """Seeded tiny model wrapped in a task."""
    torch.manual_seed(seed)
    return ReIDTask(VIReIDModel(tiny_cfg(**(model or {})), num_classes), LossConfig(**(loss or {})))
