"""Multi-view memory: a FIFO ring of detached features per identity (docs/method.md section 2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MultiViewMemory(nn.Module):
    """``bank [C,S,d]`` of features, ``valid [C,S]`` slot mask and ``pointer [C]`` next slot.

    All three are buffers, so they are saved in ``state_dict`` and follow ``.to(device)``.
    """

    bank: Tensor
    valid: Tensor
    pointer: Tensor

    def __init__(self, num_classes: int, size: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1 or size < 1 or dim < 1:
            raise ValueError(f"num_classes, size and dim must be >= 1, got {num_classes}, {size}, {dim}")
        self.num_classes, self.size, self.dim = num_classes, size, dim
        self.register_buffer("bank", torch.zeros(num_classes, size, dim))
        self.register_buffer("valid", torch.zeros(num_classes, size, dtype=torch.bool))
        self.register_buffer("pointer", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def write(self, features: Tensor, labels: Tensor) -> None:
        """Write ``features [N,d]`` into the rings of ``labels [N]``, first in first out.

        Samples are processed in order: several samples of one identity fill consecutive
        slots, and when more than S arrive at once only the last S survive.
        """
        if features.ndim != 2 or features.shape[1] != self.dim or labels.shape != features.shape[:1]:
            raise ValueError(f"expected features [N,{self.dim}] and labels [N], "
                             f"got {tuple(features.shape)} and {tuple(labels.shape)}")
        if features.shape[0] == 0:
            return
        labels = labels.to(self.pointer.device, torch.long)
        in_range = (labels.min() >= 0) & (labels.max() < self.num_classes)
        if labels.is_cuda:  # checked on the device: no host sync after every step
            torch._assert_async(in_range, "memory write: labels out of range")
        elif not bool(in_range):
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}")
        n = labels.shape[0]
        counts = torch.bincount(labels, minlength=self.num_classes)  # [C]
        # rank of each sample among the earlier samples of its identity in this write
        sorted_labels, order = torch.sort(labels, stable=True)  # [N]
        start = torch.cumsum(counts, 0) - counts  # [C] first sorted position of each identity
        rank = torch.empty_like(labels)
        rank[order] = torch.arange(n, device=labels.device) - start[sorted_labels]  # [N]
        keep = rank >= counts[labels] - self.size  # only the last S of an identity survive
        lab, r = labels[keep], rank[keep]
        slot = (self.pointer[lab] + r) % self.size  # distinct (lab, slot) pairs
        self.bank[lab, slot] = features.detach()[keep.to(features.device)].to(self.bank)
        self.valid[lab, slot] = True
        self.pointer.copy_((self.pointer + counts) % self.size)

    @torch.no_grad()
    def means(self) -> tuple[Tensor, Tensor]:
        """Mean over valid slots ``m [C,d]`` (zero where none) and ``has [C]`` (any valid slot)."""
        valid = self.valid.to(self.bank.dtype)  # [C,S]
        n = valid.sum(1)  # [C]
        m = torch.einsum("csd,cs->cd", self.bank, valid) / n.clamp(min=1.0).unsqueeze(1)  # [C,d]
        return m, n > 0

    @torch.no_grad()
    def reset(self) -> None:
        """Empty every ring."""
        self.bank.zero_()
        self.valid.zero_()
        self.pointer.zero_()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, size={self.size}, dim={self.dim}"
