"""Torch dataset over one shard table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from vireid.data.shards import ShardTable


class ShardImageDataset(Dataset[dict[str, Any]]):
    """Item i: ``dict(image float [3,H,W], label, modality, camera, index)``.

    ``label`` is the shard's label column (train: 0..C-1; other splits: -1, see
    :mod:`vireid.data.shards`); ``identity`` is added for evaluation splits' use.
    Without a transform the image is the stored uint8 [3, H, W] tensor.
    """

    def __init__(self, table: ShardTable, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.table = table
        self.transform = transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.table.image(index)  # uint8 [3, H, W]
        if self.transform is not None:
            image = self.transform(image)
        return {
            "image": image,
            "label": int(self.table.label[index]),
            "modality": int(self.table.modality[index]),
            "camera": int(self.table.camera[index]),
            "identity": int(self.table.identity[index]),
            "index": int(index),
        }
