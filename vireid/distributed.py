"""Data-parallel collectives: who takes part, gathering rows, averaging BatchNorm statistics.

The one place that talks to ``torch.distributed``. Without an initialised process group of
more than one rank every function is the identity (single-process training, tests, bench).
Gradients are averaged by torch's DistributedDataParallel (:mod:`vireid.training.loop`); the
memory is kept identical on every rank by writing all ranks' features (:func:`all_gather_rows`),
and BatchNorm running statistics are averaged after each epoch
(:func:`average_batchnorm_stats`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_distributed() -> bool:
    """Whether a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Ranks in the process group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def all_gather_rows(x: Tensor) -> Tensor:
    """Concatenate ``x [N_r,...]`` of every rank in rank order (N_r may differ per rank)."""
    if not is_distributed():
        return x
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    top = max(counts)
    padded = x.new_zeros((top, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def all_reduce_mean(x: Tensor) -> Tensor:
    """``x`` averaged over the ranks, in place (unchanged without a process group)."""
    if is_distributed():
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def average_batchnorm_stats(model: nn.Module) -> None:
    """Average BatchNorm running statistics across ranks (ranks saw different batches)."""
    if not is_distributed():
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                if buf is not None:
                    all_reduce_mean(buf)
