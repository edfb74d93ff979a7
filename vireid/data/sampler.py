"""Identity-balanced batch sampler: P identities x (K visible + K infrared) per batch."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from vireid.data.sample import MODALITY_CODES

log = logging.getLogger(__name__)


class IdentityBalancedSampler:
    """Batch sampler for cross-modality training (a ``batch_sampler`` for DataLoader).

    Each batch holds ``2 * P * K`` dataset indices ordered
    ``[visible of id_1 (K), ..., visible of id_P (K), infrared of id_1 (K), ..., infrared of id_P (K)]``
    so ``batch[i]`` (visible) and ``batch[P*K + i]`` (infrared) form the i-th fusion pair.
    An identity with fewer than K images of a modality is sampled with replacement;
    identities lacking a modality entirely are skipped (with a warning).

    Determinism and data parallelism: the draw depends only on ``(seed, epoch)``. Each
    global step draws ``world_size * P`` distinct identities (and their images) with the
    same generator on every rank; rank r takes the r-th block of P identities, so ranks
    never share an identity in a step, and their union is exactly the batch a single
    process with ``P * world_size`` identities would draw.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        modalities: Sequence[int] | np.ndarray,
        identities_per_batch: int = 8,
        instances_per_modality: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batches_per_epoch: int | None = None,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)  # [N]
        modalities = np.asarray(modalities, dtype=np.int64)  # [N] 0 visible, 1 infrared
        if labels.shape != modalities.shape or labels.ndim != 1:
            raise ValueError(f"labels {labels.shape} and modalities {modalities.shape} must be equal 1-D shapes")
        if not set(np.unique(modalities).tolist()) <= set(MODALITY_CODES.values()):
            raise ValueError("modalities must be 0 (visible) or 1 (infrared)")
        if identities_per_batch < 1 or instances_per_modality < 1:
            raise ValueError("identities_per_batch and instances_per_modality must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in 0..world_size-1 (world_size {world_size})")
        self.P, self.K = identities_per_batch, instances_per_modality
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.epoch = 0
        self.pools: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # label -> (visible idx, infrared idx)
        skipped = []
        for lab in np.unique(labels).tolist():
            vis = np.flatnonzero((labels == lab) & (modalities == 0))
            ir = np.flatnonzero((labels == lab) & (modalities == 1))
            if len(vis) and len(ir):
                self.pools[lab] = (vis, ir)
            else:
                skipped.append(lab)
        if skipped:
            log.warning("sampler: %d identities lack a modality and are skipped: %s", len(skipped), skipped[:20])
        self.identities = np.asarray(sorted(self.pools), dtype=np.int64)  # [C'] eligible labels
        need = self.P * world_size
        if len(self.identities) < need:
            raise ValueError(f"sampler needs {need} identities with both modalities "
                             f"(P={self.P} x world_size={world_size}), found {len(self.identities)}")
        n_visible = sum(len(v) for v, _ in self.pools.values())
        default = max(1, n_visible // (self.P * self.K * world_size))
        self.batches_per_epoch = int(batches_per_epoch) if batches_per_epoch else default
        if self.batches_per_epoch < 1:
            raise ValueError("batches_per_epoch must be >= 1")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's draw (call before iterating, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _pick(self, rng: np.random.Generator, pool: np.ndarray) -> np.ndarray:
        return rng.choice(pool, self.K, replace=len(pool) < self.K)

    def global_batches(self) -> Iterator[list[list[int]]]:
        """Per step, the world_size rank batches (every rank computes the same draw)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        for _ in range(self.batches_per_epoch):
            ids = rng.choice(self.identities, self.P * self.world_size, replace=False)  # [W*P]
            picks = [(self._pick(rng, self.pools[i][0]), self._pick(rng, self.pools[i][1])) for i in ids.tolist()]
            out = []
            for r in range(self.world_size):
                block = picks[r * self.P:(r + 1) * self.P]
                vis = np.concatenate([v for v, _ in block])
                ir = np.concatenate([i for _, i in block])
                out.append(np.concatenate([vis, ir]).tolist())
            yield out

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.global_batches():
            yield step[self.rank]
