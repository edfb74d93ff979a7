"""Issue 24 (GPU branches): validation ran on rank 0 only while the other ranks waited at
their next collective. Now every rank extracts the features of its share of the held-out
images and rank 0 scores them: the metrics equal one process's, and rank 1 extracts half."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vireid.data.sample import Modality
from vireid.data.shards import ShardSet
from vireid.training import validation
from vireid.training.loop import build_model

WORLD = 2


def _model(cfg, state: dict):
    model = build_model(cfg, num_classes=int(state["num_classes"]))
    model.load_state_dict(state["weights"])
    return model


def _worker(rank: int, store: str, shards: str, cfg_json: str, out_dir: str) -> None:
    from vireid.config import config_from_dict

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        cfg = config_from_dict(json.loads(cfg_json))
        model = _model(cfg, torch.load(Path(out_dir) / "model.pt", weights_only=True))
        table = ShardSet(shards).table("val")
        extracted: list[int] = []
        real = validation.table_features

        def counting(*args, **kwargs):
            extracted.append(len(kwargs["rows"]))
            return real(*args, **kwargs)

        validation.table_features = counting
        metrics = validation.validate(model, table, cfg, torch.device("cpu"))
        validation.table_features = real
        vis = np.flatnonzero(table.modality == Modality.VISIBLE.code)
        feats = validation.shared_features(model, table, vis, cfg, torch.device("cpu"))
        np.save(Path(out_dir) / f"vis{rank}.npy", feats)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "rows": extracted}))
    finally:
        dist.destroy_process_group()


def test_validation_is_shared_by_the_ranks_and_scores_as_one_process(tiny_shards, tmp_path: Path) -> None:
    from vireid.config import config_to_dict

    shards, cfg = tiny_shards
    torch.manual_seed(0)
    table = ShardSet(shards).table("val")
    num_classes = len(np.unique(ShardSet(shards).table("train").identity))
    model = build_model(cfg, num_classes=num_classes)
    torch.save({"weights": model.state_dict(), "num_classes": num_classes}, tmp_path / "model.pt")
    alone = validation.validate(model, table, cfg, torch.device("cpu"))
    vis = np.flatnonzero(table.modality == Modality.VISIBLE.code)
    ir = np.flatnonzero(table.modality == Modality.INFRARED.code)
    vis_alone = validation.shared_features(model, table, vis, cfg, torch.device("cpu"))

    mp.start_processes(_worker, args=(str(tmp_path / "store"), str(shards), json.dumps(config_to_dict(cfg)),
                                      str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r1["metrics"] == {} and set(r0["metrics"]) == set(alone)
    for key, value in alone.items():
        assert r0["metrics"][key] == pytest.approx(value, abs=1e-6), key
    # each rank extracted its half (padded to the same count), not the whole set
    halves = [-(-len(vis) // WORLD), -(-len(ir) // WORLD)]
    assert r0["rows"] == halves and r1["rows"] == halves
    # both ranks hold every row's features, in the original order
    for r in range(WORLD):
        np.testing.assert_allclose(np.load(tmp_path / f"vis{r}.npy"), vis_alone, atol=1e-5)
