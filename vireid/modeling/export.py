"""TorchScript export of the inference path (``VIReIDModel.embed``)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vireid.modeling.model import VIReIDModel


class ExportError(RuntimeError):
    """The exported module does not reproduce the model's embeddings."""


class EmbedModule(nn.Module):
    """Inference path only: two-stream backbone, GeM, BNNeck, L2 normalisation."""

    def __init__(self, model: VIReIDModel) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.pool = model.pool
        self.bnneck = model.bnneck

    def forward(self, x: Tensor, modality: Tensor) -> Tensor:
        # x [B,3,H,W], modality [B] long -> L2-normalised g [B,d]
        g = self.bnneck(self.pool(self.backbone(x, modality)))
        return F.normalize(g, dim=1)


def export_torchscript(model: VIReIDModel) -> torch.jit.ScriptModule:
    """Script the inference path of an eval-mode copy of ``model`` (classifiers and memory dropped)."""
    embed = EmbedModule(copy.deepcopy(model).cpu().eval()).eval()
    return torch.jit.script(embed)


def save_torchscript(scripted: torch.jit.ScriptModule, path: str | Path) -> Path:
    """Write ``scripted`` to ``path`` (parent directories created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(path))
    return path


def load_torchscript(path: str | Path, map_location: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load a module written by :func:`save_torchscript`."""
    return torch.jit.load(str(path), map_location=map_location)


@torch.no_grad()
def verify_export(model: VIReIDModel, scripted: torch.jit.ScriptModule, example: tuple[Tensor, Tensor],
                  atol: float = 1e-4) -> float:
    """Check ``scripted(x, modality)`` equals ``model.embed(x, modality)`` (eval mode) within
    ``atol``; return the largest absolute difference, raise :class:`ExportError` otherwise."""
    x, modality = example
    was_training = model.training
    model.eval()
    model_device = next(model.parameters()).device
    try:
        expected = model.embed(x.to(model_device), modality.to(model_device))
    finally:
        model.train(was_training)
    device = next(scripted.parameters()).device
    got = scripted(x.to(device), modality.to(device)).to(expected.device)
    if got.shape != expected.shape:
        raise ExportError(f"exported embedding has shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    diff = float((got.float() - expected.float()).abs().max())
    if not diff <= atol:
        raise ExportError(f"exported embedding differs from model.embed by {diff:.3g} (> {atol:g})")
    return diff
