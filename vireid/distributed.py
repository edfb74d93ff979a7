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


def all_gather_rows(x: Tensor, rows: int) -> Tensor:
    """Concatenate ``x [rows,...]`` of every rank in rank order -> ``[world*rows,...]``.

    Contract: every rank passes the same ``rows`` (the per-rank batch is fixed at
    ``2*P*K``), so one collective moves the rows and no sizes are exchanged (no host sync).
    ``x.shape[0]`` is checked against ``rows`` on the host (shapes are host metadata).
    """
    if x.shape[0] != rows:
        raise ValueError(f"all_gather_rows: every rank must pass {rows} rows, got {x.shape[0]}")
    if not is_distributed():
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)  # the one collective; equal sizes on every rank
    return torch.cat(parts)


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
