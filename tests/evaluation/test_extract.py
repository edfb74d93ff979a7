"""Feature extraction: index order, flip averaging, inference mode, model mode restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vireid.evaluation.extract import extract_features


class TinyModel(torch.nn.Module):
    """Linear embedding of the flattened image plus a per-modality offset; L2-normalised."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 4 * 5, 6)
        self.offset = torch.nn.Embedding(2, 6)
        self.grad_seen: list[bool] = []

    def embed(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        self.grad_seen.append(torch.is_grad_enabled() or not torch.is_inference_mode_enabled())
        return F.normalize(self.fc(x.flatten(1)) + self.offset(modality), dim=1)


def _batches(images: torch.Tensor, modality: torch.Tensor, order: np.ndarray, bs: int):
    for s in range(0, len(order), bs):
        idx = torch.as_tensor(order[s : s + bs])
        yield {"image": images[idx], "modality": modality[idx], "index": idx}


def test_order_and_flip_average() -> None:
    model = TinyModel()
    model.train()
    images = torch.randn(11, 3, 4, 5)
    modality = torch.tensor([0, 1] * 5 + [0])
    order = np.random.default_rng(0).permutation(11)
    plain = extract_features(model, _batches(images, modality, order, 4), "cpu", flip=False)
    flipped = extract_features(model, _batches(images, modality, order, 3), "cpu", flip=True)
    assert plain.dtype == np.float32 and plain.shape == (11, 6)
    assert len(model.grad_seen) == 3 + 2 * 4 and not any(model.grad_seen)  # inference mode
    with torch.no_grad():
        want = model.embed(images, modality).numpy()
        other = model.embed(torch.flip(images, dims=[3]), modality).numpy()
    np.testing.assert_allclose(plain, want, atol=1e-6)
    avg = (want + other) / 2
    np.testing.assert_allclose(flipped, avg / np.linalg.norm(avg, axis=1, keepdims=True), atol=1e-6)
    assert not np.allclose(flipped, plain)
    np.testing.assert_allclose(np.linalg.norm(flipped, axis=1), 1.0, atol=1e-6)
    assert model.training  # mode restored


def test_rejects_bad_indices() -> None:
    model = TinyModel()
    images = torch.randn(3, 3, 4, 5)
    bad = [{"image": images, "modality": torch.zeros(3, dtype=torch.long), "index": torch.tensor([0, 0, 2])}]
    with pytest.raises(ValueError, match="exactly once"):
        extract_features(model, bad, "cpu", flip=False)
    with pytest.raises(ValueError, match="no batches"):
        extract_features(model, [], "cpu", flip=False)
