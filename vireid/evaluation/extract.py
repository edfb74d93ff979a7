"""Feature extraction for evaluation: each image once, in index order, optional flip TTA."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F


class SupportsEmbed(Protocol):
    """What extraction needs from a model: ``embed(x [B,3,H,W], modality [B]) -> [B,d]``."""

    def embed(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor: ...


def extract_features(
    model: SupportsEmbed,
    batches: Iterable[Mapping[str, torch.Tensor]],
    device: torch.device | str,
    flip: bool,
) -> np.ndarray:
    """Float32 ``[N, d]`` features, row ``i`` for the item whose ``index`` is ``i``.

    Batches are dicts with ``image`` float ``[B,3,H,W]``, ``modality`` long ``[B]`` and
    ``index`` long ``[B]``; the indices must cover ``0..N-1`` exactly once. With ``flip``,
    the feature is the mean of ``embed(x)`` and ``embed(horizontally flipped x)``,
    L2-normalised again. Runs under ``torch.inference_mode`` with the model in eval mode
    (its previous mode is restored).
    """
    device = torch.device(device)
    was_training = bool(getattr(model, "training", False))
    if isinstance(model, torch.nn.Module):
        model.eval()
    feats: list[torch.Tensor] = []
    indices: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for batch in batches:
                x = batch["image"].to(device, non_blocking=True).float()
                m = batch["modality"].to(device, non_blocking=True).long()
                f = model.embed(x, m).float()
                if flip:
                    f = F.normalize(f + model.embed(torch.flip(x, dims=[3]), m).float(), dim=1)
                feats.append(f.cpu())
                indices.append(batch["index"].reshape(-1).long().cpu())
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    if not feats:
        raise ValueError("no batches to extract features from")
    index = torch.cat(indices).numpy()
    feat = torch.cat(feats).numpy().astype(np.float32, copy=False)
    n = len(index)
    if feat.shape[0] != n:
        raise ValueError(f"model returned {feat.shape[0]} features for {n} indexed images")
    seen = np.zeros(n, dtype=bool)
    if index.min() < 0 or index.max() >= n:
        raise ValueError(f"indices must cover 0..{n - 1}, got range {index.min()}..{index.max()}")
    seen[index] = True
    if not seen.all() or len(np.unique(index)) != n:
        raise ValueError(f"indices must cover 0..{n - 1} exactly once")
    out = np.empty_like(feat)
    out[index] = feat
    return out
