"""Multi-view memory: FIFO rings, means over valid slots, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.modeling.helpers import tiny_cfg
from vireid.modeling import MultiViewMemory, VIReIDModel


def _f(*values: float) -> torch.Tensor:
    return torch.tensor(values).unsqueeze(1)  # [N,1]


def test_ring_overwrites_oldest_first() -> None:
    mem = MultiViewMemory(num_classes=2, size=3, dim=1)
    for v in (1.0, 2.0, 3.0, 4.0, 5.0):
        mem.write(_f(v), torch.tensor([0]))
    assert mem.bank[0, :, 0].tolist() == [4.0, 5.0, 3.0]  # 1 and 2 overwritten, in that order
    assert mem.pointer.tolist() == [2, 0]
    assert mem.valid.tolist() == [[True, True, True], [False, False, False]]


def test_one_write_of_many_samples_equals_writing_them_one_by_one() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (40,), generator=gen)  # several identities occur more than S times
    feats = torch.randn(40, 5, generator=gen)
    batched, single = MultiViewMemory(4, 4, 5), MultiViewMemory(4, 4, 5)
    for lo in (0, 7, 30):  # writes of different sizes, interleaved with earlier state
        hi = {0: 7, 7: 30, 30: 40}[lo]
        batched.write(feats[lo:hi], labels[lo:hi])
        for i in range(lo, hi):
            single.write(feats[i : i + 1], labels[i : i + 1])
    for name in ("bank", "valid", "pointer"):
        assert torch.equal(getattr(batched, name), getattr(single, name)), name


def test_consecutive_slots_within_one_write() -> None:
    mem = MultiViewMemory(num_classes=2, size=4, dim=1)
    mem.write(_f(1.0, 10.0, 2.0), torch.tensor([0, 1, 0]))
    assert mem.bank[0, :2, 0].tolist() == [1.0, 2.0]
    assert mem.bank[1, 0, 0].item() == 10.0
    assert mem.pointer.tolist() == [2, 1]


def test_means_use_valid_slots_only() -> None:
    mem = MultiViewMemory(num_classes=3, size=4, dim=2)
    mem.write(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), torch.tensor([1, 1]))
    m, has = mem.means()
    assert has.tolist() == [False, True, False]
    torch.testing.assert_close(m[1], torch.tensor([2.0, 4.0]))  # not diluted by the 2 empty slots
    assert torch.equal(m[0], torch.zeros(2)) and torch.equal(m[2], torch.zeros(2))


def test_write_rejects_bad_input() -> None:
    mem = MultiViewMemory(num_classes=2, size=2, dim=3)
    with pytest.raises(ValueError, match="labels must be in"):
        mem.write(torch.randn(1, 3), torch.tensor([2]))
    with pytest.raises(ValueError, match="expected features"):
        mem.write(torch.randn(1, 4), torch.tensor([0]))


def test_memory_state_survives_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VIReIDModel(tiny_cfg(memory_size=3), num_classes=5)
    assert model.memory is not None
    feats = torch.randn(7, model.feat_dim)
    labels = torch.tensor([0, 0, 0, 0, 2, 4, 4])
    model.memory.write(feats, labels)
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    assert {"memory.bank", "memory.valid", "memory.pointer"} <= set(model.state_dict())

    restored = VIReIDModel(tiny_cfg(memory_size=3), num_classes=5)
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert restored.memory is not None
    for name in ("bank", "valid", "pointer"):
        assert torch.equal(getattr(restored.memory, name), getattr(model.memory, name)), name
    # and the restored ring continues where the saved one stopped
    more = torch.randn(2, model.feat_dim)
    model.memory.write(more, torch.tensor([0, 2]))
    restored.memory.write(more, torch.tensor([0, 2]))
    assert torch.equal(restored.memory.bank, model.memory.bank)
