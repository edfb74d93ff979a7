"""Feature extraction for evaluation: each image once, in index order, optional flip TTA."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vireid.data.loader import ShardImageDataset
from vireid.data.shards import ShardTable
from vireid.data.transforms import test_transform


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


class _Rows(Dataset[dict[str, Any]]):
    """Rows ``indices`` of a dataset, with ``index`` renumbered 0..n-1 (extraction order)."""

    def __init__(self, dataset: ShardImageDataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        item = self.dataset[self.indices[k]]
        return {"image": item["image"], "modality": item["modality"], "index": k}


def table_features(model: SupportsEmbed, table: ShardTable, *, image_size: tuple[int, int],
                   device: torch.device | str, batch_size: int, flip: bool,
                   rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Float32 ``[N, d]`` features of the rows ``rows`` of ``table`` (all rows when None), in
    that order: the test transform at ``image_size`` (H, W), then :func:`extract_features`.

    The one extraction path of evaluation (the evaluate stage) and validation (the trainer).
    """
    dataset = ShardImageDataset(table, test_transform(*image_size))
    items: Dataset[dict[str, Any]] = dataset if rows is None else _Rows(dataset, rows)
    loader = DataLoader(items, batch_size=batch_size, shuffle=False,
                        pin_memory=torch.device(device).type == "cuda")
    return extract_features(model, loader, device, flip)
