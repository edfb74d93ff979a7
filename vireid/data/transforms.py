"""Image transforms on uint8 [3, H, W] tensors (torchvision.transforms.v2).

Randomness comes from torch's global generator: seed it (``torch.manual_seed``) for a
reproducible run; DataLoader workers get distinct seeds derived from it.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AGW_PAD, AGW_HEIGHT = 10, 288  # AGW pads 10 pixels around 288x144 images before the random crop


def scaled_pad(h: int) -> int:
    """AGW's crop padding scaled to image height ``h``: 10 at 288, 2 at 64 (at least 1).

    A fixed 10 pixels would shift a 64x32 image by up to a third of its width, an
    augmentation far stronger than the recipe's (measured: it kept a short CPU run from
    fitting the training identities across modalities).
    """
    return max(1, round(AGW_PAD * h / AGW_HEIGHT))


def train_transform(h: int, w: int, pad: int | None = None) -> v2.Compose:
    """AGW augmentation: resize to (h, w), pad + random crop, flip, normalise -> float [3, h, w].

    ``pad``: pixels of zero padding before the crop; None: :func:`scaled_pad` of ``h``.
    """
    pad = scaled_pad(h) if pad is None else pad
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
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
