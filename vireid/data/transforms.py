"""Image transforms on uint8 [3, H, W] tensors (torchvision.transforms.v2).

Randomness comes from torch's global generator: seed it (``torch.manual_seed``) for a
reproducible run; DataLoader workers get distinct seeds derived from it.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(h: int, w: int, pad: int = 10) -> v2.Compose:
    """AGW augmentation: resize to (h, w), pad ``pad`` + random crop, flip, normalise -> float [3, h, w]."""
    return v2.Compose([
        v2.Resize((h, w), antialias=True),
        v2.Pad(pad),
        v2.RandomCrop((h, w)),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def test_transform(h: int, w: int) -> v2.Compose:
    """Resize to (h, w) and normalise -> float [3, h, w]; deterministic."""
    return v2.Compose([
        v2.Resize((h, w), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
