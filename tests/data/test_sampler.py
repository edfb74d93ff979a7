"""IdentityBalancedSampler: layout, pairing, determinism, DataLoader workers, ranks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vireid.data.sampler import IdentityBalancedSampler

P, K = 3, 4


def _pool() -> tuple[np.ndarray, np.ndarray]:
    """14 identities; label 5 has 2 infrared images (< K), label 13 has no infrared image."""
    labels, mods = [], []
    for lab in range(14):
        n_vis, n_ir = 3 + lab % 5, (2 if lab == 5 else 0 if lab == 13 else 6 + lab % 3)
        labels += [lab] * (n_vis + n_ir)
        mods += [0] * n_vis + [1] * n_ir
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))  # interleave so indices are not grouped by identity
    return np.asarray(labels)[order], np.asarray(mods)[order]


def test_layout_pairing_and_skips(caplog: pytest.LogCaptureFixture) -> None:
    labels, mods = _pool()
    with caplog.at_level(logging.WARNING):
        s = IdentityBalancedSampler(labels, mods, P, K, seed=0)
    assert "1 identities lack a modality" in caplog.text and "[13]" in caplog.text
    n_visible = int(((mods == 0) & (labels != 13)).sum())
    assert len(s) == n_visible // (P * K) >= 1
    batches = list(s)
    assert len(batches) == len(s)
    seen_short = False
    for b in batches:
        b = np.asarray(b)
        assert b.shape == (2 * P * K,)
        assert (mods[b[: P * K]] == 0).all() and (mods[b[P * K:]] == 1).all()
        np.testing.assert_array_equal(labels[b[: P * K]], labels[b[P * K:]])  # i-th pair: same identity
        ids = labels[b[: P * K]].reshape(P, K)
        assert (ids == ids[:, :1]).all()  # blocks of K
        assert len(set(ids[:, 0].tolist())) == P  # no identity twice in a batch
        assert 13 not in ids
        for row in ids[:, 0]:
            own_ir = set(np.flatnonzero((labels == row) & (mods == 1)).tolist())
            assert set(b[P * K:][labels[b[P * K:]] == row].tolist()) <= own_ir
        if 5 in ids:
            seen_short = True
            assert len(set(b[P * K:][labels[b[P * K:]] == 5].tolist())) <= 2  # with replacement
    assert seen_short


def test_determinism_and_epochs() -> None:
    labels, mods = _pool()
    a = IdentityBalancedSampler(labels, mods, P, K, seed=7, batches_per_epoch=6)
    b = IdentityBalancedSampler(labels, mods, P, K, seed=7, batches_per_epoch=6)
    assert list(a) == list(b) and len(a) == 6
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(IdentityBalancedSampler(labels, mods, P, K, seed=8, batches_per_epoch=6)) != first


class _Index(Dataset[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def test_same_sequence_through_dataloader_workers() -> None:
    labels, mods = _pool()
    s = IdentityBalancedSampler(labels, mods, P, K, seed=3, batches_per_epoch=5)
    s.set_epoch(2)
    expected = list(s)
    for workers in (0, 2):
        loader = DataLoader(_Index(len(labels)), batch_sampler=s, num_workers=workers)
        got = [t.tolist() for t in loader]
        assert got == expected, workers
        assert all(isinstance(t, list) for t in got)
    assert isinstance(next(iter(DataLoader(_Index(len(labels)), batch_sampler=s))), torch.Tensor)


def test_ranks_disjoint_and_union_is_global_draw() -> None:
    labels, mods = _pool()
    world = 2
    ranks = [list(IdentityBalancedSampler(labels, mods, P, K, seed=5, rank=r, world_size=world)) for r in range(world)]
    single = list(IdentityBalancedSampler(labels, mods, P * world, K, seed=5))
    assert len(ranks[0]) == len(ranks[1]) == len(single) >= 1
    for step, glob in enumerate(single):
        r0, r1 = ranks[0][step], ranks[1][step]
        assert set(labels[r0]).isdisjoint(set(labels[r1]))
        half = P * K
        assert r0 == glob[:half] + glob[world * half: world * half + half]
        assert r1 == glob[half: 2 * half] + glob[world * half + half:]


def test_errors() -> None:
    labels, mods = _pool()
    with pytest.raises(ValueError, match="needs 28 identities with both modalities"):
        IdentityBalancedSampler(labels, mods, 14, K, world_size=2)
    with pytest.raises(ValueError, match="rank 2 must be in"):
        IdentityBalancedSampler(labels, mods, P, K, rank=2, world_size=2)
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        IdentityBalancedSampler(labels, mods[:-1], P, K)
