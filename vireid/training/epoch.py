"""One training epoch on one rank: the loader, batches on the device, the step, read-backs.

:func:`build_train_loader` gives the identity-balanced loader (AGW augmentation per image, or
uint8 images for :func:`device_augment`); :func:`train_one_epoch` runs the step (losses ->
weighted sum -> backward -> SGD -> memory write) over it, reading values back from the
device only every ``train.log_every`` steps. :class:`vireid.training.loop.Trainer` ties this
into epochs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from vireid.config import Config
from vireid.data.batch_augment import BatchAugment
from vireid.data.loader import ShardImageDataset
from vireid.data.sampler import IdentityBalancedSampler
from vireid.data.shards import ShardTable
from vireid.data.transforms import train_transform
from vireid.distributed import all_reduce_mean, world_size
from vireid.modeling import ReIDTask, check_batch_layout
from vireid.training.runtime import StepRuntime

log = logging.getLogger(__name__)

# called after every step with its 0-based index (no values: reading them would sync the device)
StepCallback = Callable[[int], None]
# called every train.log_every steps (and at the epoch's end) with that window's steps:
# [(0-based step, {term: value})], the values read back from the device in one transfer
LogCallback = Callable[[list[tuple[int, dict[str, float]]]], None]
# a batch augmentation on the training device: uint8 [B,3,H,W] -> float [B,3,H,W]
BatchTransform = Callable[[torch.Tensor], torch.Tensor]


def build_train_loader(table: ShardTable, cfg: Config, rank: int = 0,
                       world_size: int = 1) -> tuple[DataLoader, IdentityBalancedSampler]:
    """Loader over split ``train`` with the identity-balanced sampler and AGW augmentation.

    With ``train.augment_on_device`` the items carry the stored uint8 [3, H, W] images (the
    workers only decode) and :func:`device_augment` is applied to each batch on the device.
    """
    t = cfg.train
    sampler = IdentityBalancedSampler(
        table.label, table.modality, identities_per_batch=t.identities_per_batch,
        instances_per_modality=t.instances_per_modality, seed=t.seed, rank=rank,
        world_size=world_size, batches_per_epoch=t.iters_per_epoch or None)
    transform = None if t.augment_on_device else train_transform(cfg.data.image_height,
                                                                 cfg.data.image_width)
    dataset = ShardImageDataset(table, transform)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=t.loader_workers,
                        persistent_workers=False, pin_memory=t.use_gpu)
    return loader, sampler


def device_augment(cfg: Config) -> BatchTransform | None:
    """The batched AGW augmentation when ``train.augment_on_device`` (else None: per image)."""
    if not cfg.train.augment_on_device:
        return None
    return BatchAugment(size=(cfg.data.image_height, cfg.data.image_width))


def check_batch_on_host(labels: torch.Tensor, modalities: torch.Tensor, num_classes: int | None) -> None:
    """The sampler batch's layout and label range, checked on the CPU tensors before the copy:
    a bad batch is a ValueError naming it here, not a device-side assert that poisons the
    CUDA context (and that Ray Train would replay on every retry). Costs no device sync."""
    check_batch_layout(labels, modalities)
    if num_classes is not None and labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
        raise ValueError(f"batch labels must be in 0..{num_classes - 1} (the training identities), "
                         f"got {int(labels.min())}..{int(labels.max())}")


def device_batches(loader: DataLoader, device: torch.device,
                   num_classes: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """``(image, label, modality)`` of each batch on ``device``, one batch ahead: the copy of
    batch i+1 is issued (non-blocking, from pinned memory on CUDA) before batch i is used.
    Each batch is checked on the host first (:func:`check_batch_on_host`)."""
    def move(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        check_batch_on_host(batch["label"], batch["modality"], num_classes)
        return tuple(batch[k].to(device, non_blocking=True) for k in ("image", "label", "modality"))

    it = iter(loader)
    ahead = next(it, None)
    nxt = None if ahead is None else move(ahead)
    while nxt is not None:
        current = nxt
        ahead = next(it, None)
        nxt = None if ahead is None else move(ahead)
        yield current


def train_one_epoch(
    task: ReIDTask,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    device: torch.device,
    runtime: StepRuntime,
    forward: nn.Module | None = None,
    on_step: StepCallback | None = None,
    on_log: LogCallback | None = None,
    log_every: int = 10,
    augment: BatchTransform | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: losses -> weighted sum -> backward -> step -> memory write.

    ``forward``: the module the batch goes through (the task wrapped in
    DistributedDataParallel when data-parallel, whose gradient all-reduce overlaps the
    backward pass); default ``task``. ``runtime``: autocast and memory format
    (:mod:`vireid.training.runtime`). ``augment``: applied to each image batch on ``device``
    (the loader then yields uint8 batches, see :func:`device_augment`).

    No step reads a value back to the host: the loss terms and diagnostics stay on the
    device and are read every ``log_every`` steps (and at the end), when a non-finite loss
    of that window raises :class:`FloatingPointError` naming its step. ``on_step(i)`` runs
    after every step, ``on_log(rows)`` after every read-back. Returns the epoch means of
    every term, ``loss`` (the ``loss.weights``-weighted total) and the task's diagnostics
    (``kdw_*``, ``conf_*``; averaged over ranks when distributed), ``steps``, ``images`` (all
    ranks), ``seconds`` and ``images_per_s``.
    """
    task.train()
    forward = task if forward is None else forward
    world = world_size()
    names: list[str] = []  # the order of the values in each step's row
    window: list[torch.Tensor] = []  # rows [V] of the steps not yet read back
    total: torch.Tensor | None = None  # float64 [V] sums over the epoch (host)
    steps = images = 0
    t0 = time.perf_counter()

    def read_back(last_step: int) -> None:
        nonlocal total
        rows = torch.stack(window).double().cpu()  # [W,V]: the one host transfer of the window
        first = last_step - len(window) + 1
        window.clear()
        finite = torch.isfinite(rows[:, names.index("loss")])
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0, 0])
            terms = dict(zip(names, rows[bad].tolist(), strict=True))
            raise FloatingPointError(f"epoch {epoch + 1} step {first + bad}: non-finite loss {terms}")
        total = rows.sum(0) if total is None else total + rows.sum(0)
        logged = [(first + j, dict(zip(names, r.tolist(), strict=True))) for j, r in enumerate(rows)]
        if on_log is not None:
            on_log(logged)
        rate = images / max(time.perf_counter() - t0, 1e-9)
        log.info("epoch %d step %d/%d: %s (%.1f images/s)", epoch + 1, last_step + 1, len(loader),
                 " ".join(f"{k}={v:.4f}" for k, v in logged[-1][1].items() if not k.startswith(("kdw_", "conf_"))),
                 rate)

    i = -1
    for i, (x, y, m) in enumerate(device_batches(loader, device, task.model.num_classes)):
        if augment is not None:
            x = augment(x)  # uint8 [B,3,H,W] -> float [B,3,H,W], on the device
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y, m = y.long(), m.long()
        with runtime.autocast():
            losses, state = forward(x, y, m)
        loss = task.total(losses)  # float32, weighted by loss.weights
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        task.after_step(state)
        values = {**{k: v.detach() for k, v in losses.items()}, "loss": loss.detach(), **state.diagnostics}
        if not names:
            names = list(values)
        window.append(torch.stack([values[k].float() for k in names]))  # [V], on the device
        steps += 1
        images += x.shape[0] * world
        if on_step is not None:
            on_step(i)
        if len(window) >= log_every:
            read_back(i)
    if steps == 0:
        raise ValueError(f"epoch {epoch + 1}: the sampler produced no batches")
    if window:
        read_back(i)
    assert total is not None
    means = all_reduce_mean((total / steps).to(device)).cpu()
    seconds = time.perf_counter() - t0
    out = {k: float(v) for k, v in zip(names, means.tolist(), strict=True)}
    out.update(steps=float(steps), images=float(images), seconds=seconds,
               images_per_s=images / max(seconds, 1e-9))
    return out
