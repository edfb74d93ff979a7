"""Memory sync across data-parallel ranks: gloo, world size 2, different features per rank;
and the row gather it rests on (one collective, no sizes exchanged)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.modeling.helpers import make_task
from vireid.distributed import all_gather_rows
from vireid.modeling import TaskState
from vireid.modeling.task import interleave_modalities

WORLD = 2


def _worker(rank: int, store_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD)
    try:
        task = make_task(num_classes=5, model={"memory_size": 3})  # same seed: same model on both ranks
        gen = torch.Generator().manual_seed(100 + rank)  # different features per rank
        n = 3  # pairs per rank, sampler layout [visible, infrared]: every rank's batch has 2*P*K rows
        task.rows_per_rank = 2 * n
        feats = torch.randn(2 * n, task.model.feat_dim, generator=gen)
        labels = torch.randint(0, 5, (n,), generator=gen).repeat(2)
        task.after_step(TaskState(feats, labels, {}))
        mem = task.model.memory
        assert mem is not None
        torch.save({"bank": mem.bank, "valid": mem.valid, "pointer": mem.pointer,
                    "feats": feats, "labels": labels}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_memory_is_identical_on_every_rank(tmp_path: Path) -> None:
    # fork rather than spawn: the children skip re-importing torch (seconds each on a busy CI box)
    mp.start_processes(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD,
                       join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for name in ("bank", "valid", "pointer"):
        assert torch.equal(r0[name], r1[name]), name
    # and it is what one process would hold after writing rank 0's then rank 1's samples,
    # each rank's batch interleaved (v0, r0, v1, r1, ...)
    ref = make_task(num_classes=5, model={"memory_size": 3}).model.memory
    assert ref is not None
    o0, o1 = (interleave_modalities(r["labels"].shape[0]) for r in (r0, r1))
    ref.write(torch.cat([r0["feats"][o0], r1["feats"][o1]]), torch.cat([r0["labels"][o0], r1["labels"][o1]]))
    assert torch.equal(ref.bank, r0["bank"]) and torch.equal(ref.pointer, r0["pointer"])
    assert not torch.equal(r0["feats"][:4], r1["feats"][:4])


_COLLECTIVES = ("all_gather", "all_gather_into_tensor", "all_gather_single", "all_gather_object",
                "all_reduce", "broadcast", "gather", "all_to_all_single")


def _gather_worker(rank: int, store_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD)
    try:
        calls: list[str] = []
        for name in _COLLECTIVES:  # count every collective the gather makes
            fn = getattr(dist, name, None)
            if fn is not None:
                def counted(*a, _fn=fn, _name=name, **k):  # type: ignore[no-untyped-def]
                    calls.append(_name)
                    return _fn(*a, **k)
                setattr(dist, name, counted)
        x = torch.arange(6 * 3, dtype=torch.float32).reshape(6, 3) + 100 * rank  # [6,3], rank-specific
        labels = torch.arange(6) + 10 * rank  # [6] int64
        out = {"x": all_gather_rows(x, 6), "labels": all_gather_rows(labels, 6), "calls": list(calls)}
        torch.save(out, Path(out_dir) / f"gather{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_gather_rows_is_one_collective_in_rank_order(tmp_path: Path) -> None:
    mp.start_processes(_gather_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD,
                       join=True, start_method="fork")
    expected_x = torch.cat([torch.arange(18, dtype=torch.float32).reshape(6, 3) + 100 * r for r in range(WORLD)])
    expected_labels = torch.cat([torch.arange(6) + 10 * r for r in range(WORLD)])
    for r in range(WORLD):
        out = torch.load(tmp_path / f"gather{r}.pt", weights_only=True)
        assert torch.equal(out["x"], expected_x)  # [12,3]
        assert torch.equal(out["labels"], expected_labels) and out["labels"].dtype == torch.int64
        assert len(out["calls"]) == 2, out["calls"]  # one collective per call: no size exchange


def test_all_gather_rows_refuses_a_batch_of_another_size() -> None:
    with pytest.raises(ValueError, match="every rank must pass 8 rows, got 6"):
        all_gather_rows(torch.zeros(6, 3), 8)
    x = torch.zeros(8, 3)
    assert all_gather_rows(x, 8) is x  # no process group: the identity
