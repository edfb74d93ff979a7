"""TorchScript export of the inference path: same embeddings, save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.modeling.helpers import batch, make_task
from vireid.modeling import (
    ExportError,
    export_torchscript,
    load_torchscript,
    save_torchscript,
    verify_export,
)


def test_export_round_trip_reproduces_embed(tmp_path: Path) -> None:
    task = make_task(model={"fusion": True, "memory": True})
    task(*batch())  # one training-mode forward moves the BN running statistics off their init
    model = task.model.eval()
    images, _, mods = batch(p=2, k=2, seed=3)
    scripted = export_torchscript(model)
    assert verify_export(model, scripted, (images, mods)) < 1e-4
    path = save_torchscript(scripted, tmp_path / "export" / "embed.pt")
    loaded = load_torchscript(path)
    assert verify_export(model, loaded, (images, mods)) < 1e-4
    # the export carries no classifiers and no memory
    names = {n for n, _ in loaded.named_parameters()} | {n for n, _ in loaded.named_buffers()}
    assert not any(n.startswith(("classifier", "dual_classifiers", "memory")) for n in names)


def test_verify_export_detects_a_different_model() -> None:
    model = make_task(model={"fusion": False, "memory": False}, loss={"distill": False}).model.eval()
    scripted = export_torchscript(model)
    with torch.no_grad():
        model.backbone.layer4[0].conv1.weight.mul_(-1.0)  # the model changes after export
    images, _, mods = batch(p=2, k=1)
    with pytest.raises(ExportError, match="differs from model.embed"):
        verify_export(model, scripted, (images, mods))
