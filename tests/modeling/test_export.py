"""``torch.export`` of the inference path: same embeddings, dynamic batch, atomic save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.modeling.helpers import batch, make_task
from vireid.modeling import (
    ExportError,
    VIReIDModel,
    export_program,
    load_program,
    save_program,
    verify_export,
)


def trained_model() -> VIReIDModel:
    """Tiny model with fusion and memory, BN running statistics moved off their init and
    stems that differ clearly (both start as copies of one stem)."""
    task = make_task(model={"fusion": True, "memory": True})
    task(*batch())  # one training-mode forward updates the BN running statistics
    conv = task.model.backbone.stems[1][0]  # the infrared stem's conv1
    with torch.no_grad():
        conv.weight.add_(0.5 * conv.weight.std() * torch.randn_like(conv.weight))
    return task.model.eval()


def test_export_round_trip_reproduces_embed(tmp_path: Path) -> None:
    model = trained_model()
    images, _, mods = batch(p=2, k=2, seed=3)  # [8,3,64,32], 4 visible then 4 infrared
    program = export_program(model, (images, mods))
    path = save_program(program, tmp_path / "export" / "embed.pt2")
    loaded = load_program(path)
    # a batch mixing both modalities in another order and of another size than the example
    x, _, _ = batch(p=1, k=3, seed=5)  # [6,3,64,32]
    mixed = torch.tensor([1, 0, 0, 1, 0, 1])
    with torch.no_grad():
        expected = model.embed(x, mixed)
        got = loaded(x, mixed)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert verify_export(model, loaded, (x, mixed)) < 1e-4
    assert verify_export(model, program, (images, mods)) < 1e-4
    # the export carries no classifiers and no memory
    names = {n for n, _ in program.named_parameters()} | {n for n, _ in program.named_buffers()}
    names |= {n for n, _ in loaded.named_parameters()} | {n for n, _ in loaded.named_buffers()}
    assert names and not any(n.startswith(("classifier", "dual_classifiers", "memory"))
                             for n in names)
    own = sum(p.numel() for p in loaded.parameters())
    inference = sum(p.numel() for m in (model.backbone, model.pool, model.bnneck) for p in m.parameters())
    assert own == inference


def test_loaded_module_refuses_an_unknown_modality(tmp_path: Path) -> None:
    model = make_task(model={"fusion": False, "memory": False}, loss={"distill": False}).model.eval()
    images, _, mods = batch(p=1, k=1)
    loaded = load_program(save_program(export_program(model, (images, mods)), tmp_path / "e.pt2"))
    with torch.no_grad(), pytest.raises(RuntimeError, match="modality codes must be 0"):
        loaded(images, torch.tensor([0, 2]))


def test_verify_export_detects_a_different_model() -> None:
    model = make_task(model={"fusion": False, "memory": False}, loss={"distill": False}).model.eval()
    images, _, mods = batch(p=2, k=1)
    program = export_program(model, (images, mods))
    assert verify_export(model, program, (images, mods)) < 1e-4
    with torch.no_grad():
        model.backbone.layer4[0].conv1.weight.mul_(-1.0)  # the model changes after export
    with pytest.raises(ExportError, match="differs from model.embed"):
        verify_export(model, program, (images, mods))


def test_export_needs_a_batch_of_two() -> None:
    model = make_task(model={"fusion": False, "memory": False}, loss={"distill": False}).model.eval()
    images, _, mods = batch(p=1, k=1)
    with pytest.raises(ValueError, match="at least 2"):
        export_program(model, (images[:1], mods[:1]))


def test_save_is_atomic_and_overwrites(tmp_path: Path) -> None:
    model = make_task(model={"fusion": False, "memory": False}, loss={"distill": False}).model.eval()
    images, _, mods = batch(p=1, k=1)
    path = tmp_path / "embed.pt2"
    path.write_bytes(b"an older file")
    save_program(export_program(model, (images, mods)), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embed.pt2"]  # no temporary file left
    assert verify_export(model, load_program(path), (images, mods)) < 1e-4

    class Unsaveable(torch.nn.Module):  # the save fails half-way: the old file stays
        pass

    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever torch.export.save raises
        save_program(Unsaveable(), path)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embed.pt2"]
    assert verify_export(model, load_program(path), (images, mods)) < 1e-4
