"""AGW's training augmentation as one batched operation on the training device.

The per-image path (:func:`vireid.data.transforms.train_transform`) runs in the DataLoader
workers; with ``train.augment_on_device`` the workers only decode and ship uint8 batches,
and :class:`BatchAugment` applies the same augmentation to the whole batch where it lives
(CPU or CUDA): zero padding (in uint8 space, as ``v2.Pad``), a random crop back to the
input size with offsets uniform in ``0..2*pad`` (as ``v2.RandomCrop`` after the pad), a
horizontal flip with probability 1/2, then float in [0, 1] and ImageNet normalisation.

Randomness: one draw per batch from torch's global CPU generator (seeded per epoch by the
training loop), so a run is reproducible and draws the same augmentation on any device.
The draws are copied to the device once; the rest is vectorised indexing on the device,
with no loop over samples and no host synchronisation.
"""

from __future__ import annotations

import torch

from vireid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, scaled_pad


def check_batch(x: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` is a uint8 [B, 3, H, W] batch."""
    if x.dtype != torch.uint8:
        raise ValueError(f"batch augmentation needs a uint8 batch, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"batch augmentation needs a 4-D batch [B, 3, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise ValueError(f"batch augmentation needs 3 channels [B, 3, H, W], got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")


def draw_params(batch: int, pad: int) -> torch.Tensor:
    """The random draws of one batch: int64 [batch, 3] = (top, left, flip), on the CPU.

    One call to torch's global CPU generator: each sample gets one integer uniform in
    ``0..2*(2*pad+1)**2 - 1``, split into ``top`` and ``left`` (each uniform in ``0..2*pad``,
    independent) and ``flip`` (0 or 1, probability 1/2).
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n = 2 * pad + 1  # possible offsets per axis
    k = torch.randint(0, 2 * n * n, (batch,), dtype=torch.int64)  # [B]
    return torch.stack((k % n, (k // n) % n, k // (n * n)), dim=1)  # [B, 3]


class BatchAugment:
    """AGW augmentation of a uint8 [B, 3, H, W] batch -> float32 [B, 3, H, W] on its device.

    ``pad``: pixels of zero padding before the crop; None: :func:`scaled_pad` of the batch
    height (the per-image default). ``size``: the (H, W) batches must have, checked when given.
    """

    def __init__(self, pad: int | None = None, size: tuple[int, int] | None = None) -> None:
        if pad is not None and pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.pad, self.size = pad, size
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def pad_for(self, height: int) -> int:
        """The padding used for batches of height ``height``."""
        return scaled_pad(height) if self.pad is None else self.pad

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Draw this batch's offsets and flips, then :meth:`apply` them."""
        check_batch(x)
        params = draw_params(x.shape[0], self.pad_for(x.shape[2]))  # [B, 3] int64, CPU
        return self.apply(x, params)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Pad, crop at ``params[:, 0:2]`` (top, left in the padded image), flip where
        ``params[:, 2]`` is 1, normalise. Deterministic given ``params`` (int [B, 3], any device).
        """
        check_batch(x)
        b, _, h, w = x.shape
        if self.size is not None and (h, w) != tuple(self.size):
            raise ValueError(f"batch augmentation expects images of size {tuple(self.size)}, got {(h, w)}")
        if tuple(params.shape) != (b, 3):
            raise ValueError(f"params must have shape ({b}, 3), got {tuple(params.shape)}")
        pad = self.pad_for(h)
        params = params.to(x.device, dtype=torch.int64, non_blocking=True)  # [B, 3]
        top, left, flip = params.unbind(1)  # [B] each
        # both orientations, zero-padded (in uint8, as v2.Pad): [B, 2, 3, H+2p, W+2p]
        buf = x.new_zeros(b, 2, 3, h + 2 * pad, w + 2 * pad)
        buf[:, 0, :, pad:pad + h, pad:pad + w] = x
        buf[:, 1, :, pad:pad + h, pad:pad + w] = x.flip(-1)
        # a flipped crop at ``left`` is the crop of the flipped padded image at 2p - left
        left = torch.where(flip.bool(), 2 * pad - left, left)  # [B]
        # every (top, left) window as a view: [B, 2, 3, 2p+1, 2p+1, H, W] (no copy)
        windows = buf.unfold(3, h, 1).unfold(4, w, 1)
        rows = torch.arange(b, device=x.device)  # [B]
        # advanced indices on dims 0, 1, 3, 4 around a slice: [B, 3, H, W] uint8 (one gather)
        crops = windows[rows, flip, :, top, left]
        mean, std = self._mean_std(x.device)  # [1, 3, 1, 1] each
        # exactly v2.ToDtype(float32, scale=True) then v2.Normalize
        return crops.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)  # [B, 3, H, W] float32

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """ImageNet mean and std as float32 [1, 3, 1, 1] on ``device`` (copied once per device)."""
        if device not in self._stats:
            self._stats[device] = (
                torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1).to(device),
                torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1).to(device))
        return self._stats[device]

    def __repr__(self) -> str:
        pad = "scaled_pad(H)" if self.pad is None else self.pad
        return f"BatchAugment(pad={pad}, size={self.size})"
