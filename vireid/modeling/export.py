"""``torch.export`` of the inference path (``VIReIDModel.embed``): the one inference wrapper.

The model's own two-stream backbone routes samples with ``nonzero`` (data-dependent
shapes, which ``torch.export`` cannot trace); :class:`ExportableEmbedder` runs both stems on the whole
batch and picks per sample with ``torch.where``: the same values in eval mode, with a
dynamic batch size.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

from vireid.io import atomic_write_bytes
from vireid.modeling.model import VIReIDModel

ExportedModule = Callable[[Tensor, Tensor], Tensor]  # module(images, modality) -> [B,d]


class ExportError(RuntimeError):
    """The exported module does not reproduce the model's embeddings."""


class ExportableEmbedder(nn.Module):
    """``forward(images [B,3,H,W] float, modality [B] long) -> [B,d]`` L2-normalised
    embedding, equal to ``VIReIDModel.embed`` in eval mode; ``torch.export``-able."""

    def __init__(self, model: VIReIDModel) -> None:
        super().__init__()
        backbone = model.backbone
        self.stems = backbone.stems  # [visible, infrared]
        self.body = nn.Sequential(backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
        self.pool = model.pool
        self.bnneck = model.bnneck

    def forward(self, images: Tensor, modality: Tensor) -> Tensor:
        # images [B,3,H,W], modality [B] long in {0,1} -> L2-normalised g [B,d]
        torch._assert_async(((modality == 0) | (modality == 1)).all(),
                            "modality codes must be 0 (visible) or 1 (infrared)")
        infrared = (modality == 1).view(-1, 1, 1, 1)  # [B,1,1,1]
        y = torch.where(infrared, self.stems[1](images), self.stems[0](images))  # [B,64,H/4,W/4]
        return F.normalize(self.bnneck(self.pool(self.body(y))), dim=1)  # [B,d]


def inference_copy(model: VIReIDModel) -> ExportableEmbedder:
    """An eval-mode :class:`ExportableEmbedder` over a CPU copy of ``model`` (``model`` is untouched)."""
    return ExportableEmbedder(copy.deepcopy(model).cpu().eval()).eval()


def export_program(model: VIReIDModel, example: tuple[Tensor, Tensor]) -> ExportedProgram:
    """``torch.export`` the inference path of an eval-mode CPU copy of ``model`` (classifiers
    and memory dropped) with a dynamic batch dimension.

    ``example``: ``(images [B,3,H,W], modality [B])`` with ``B >= 2`` (``torch.export``
    specialises a batch of 1 to a constant); the image size is fixed to the example's.
    """
    images, modality = (t.detach().cpu() for t in example)
    if images.dim() != 4 or modality.shape != images.shape[:1]:
        raise ValueError(f"example: expected images [B,3,H,W] and modality [B], got "
                         f"{tuple(images.shape)} and {tuple(modality.shape)}")
    if images.shape[0] < 2:
        raise ValueError("example: a batch of at least 2 is needed (torch.export specialises batch 1)")
    batch = Dim("batch")
    return torch.export.export(inference_copy(model), (images, modality.long()),
                               dynamic_shapes={"images": {0: batch}, "modality": {0: batch}})


def save_program(program: ExportedProgram, path: str | Path) -> Path:
    """Write ``program`` to ``path`` atomically (:func:`vireid.io.atomic_write_bytes`: a
    temporary file in the same directory, then a rename; parent directories created)."""
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_program(path: str | Path) -> nn.Module:
    """Load a program written by :func:`save_program` -> CPU ``module(images, modality) -> [B,d]``."""
    return torch.export.load(path).module()


@torch.no_grad()
def verify_export(model: VIReIDModel, exported: ExportedProgram | ExportedModule,
                  example: tuple[Tensor, Tensor], atol: float = 1e-4) -> float:
    """Check ``exported(x, modality)`` equals ``model.embed(x, modality)`` (eval mode) within
    ``atol``; return the largest absolute difference, raise :class:`ExportError` otherwise.

    ``exported``: an :class:`ExportedProgram` or a module from :func:`load_program`.
    """
    x, modality = example
    was_training = model.training
    model.eval()
    model_device = next(model.parameters()).device
    try:
        expected = model.embed(x.to(model_device), modality.to(model_device))
    finally:
        model.train(was_training)
    module = exported.module() if isinstance(exported, ExportedProgram) else exported
    param = next(module.parameters(), None) if isinstance(module, nn.Module) else None
    device = param.device if param is not None else torch.device("cpu")
    got = module(x.to(device), modality.to(device)).to(expected.device)
    if got.shape != expected.shape:
        raise ExportError(f"exported embedding has shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    diff = float((got.float() - expected.float()).abs().max())
    if not diff <= atol:
        raise ExportError(f"exported embedding differs from model.embed by {diff:.3g} (> {atol:g})")
    return diff
