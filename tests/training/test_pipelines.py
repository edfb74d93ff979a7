"""The evaluate and summary stage entry points on a tiny trained model (``model_file``:
tests/training/conftest.py)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from vireid.config import replace
from vireid.data.shards import ShardSet
from vireid.evaluation.regdb import TrialMismatchError
from vireid.stages import evaluate as evaluate_stage
from vireid.training.checkpoint import CheckpointMismatchError, read_model_file, save_model


def test_evaluate_sysu_writes_metrics_and_plots(tiny_shards, model_file, tmp_path) -> None:
    shards, cfg = tiny_shards
    cfg = replace(cfg, eval={"trials": 2, "sysu_modes": ["all", "indoor"], "sysu_shots": ["single"]})
    metrics = evaluate_stage.evaluate(cfg, model_file, shards, tmp_path, torch.device("cpu"))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["units"] == "percent"
    assert set(k for k, v in on_disk.items() if isinstance(v, dict)) == {"sysu/all/single", "sysu/indoor/single",
                                                                          "provenance"}
    prov = on_disk["provenance"]
    assert prov["shards_sha256"] == ShardSet(shards).manifest["sha256_total"] and prov["dataset"] == "sysu"
    assert prov["protocol"] == "sysu/all/single@community+trials2" and prov["data_kind"] == "synthetic"
    assert prov["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert on_disk["sysu/all/single"]["trials"] == 2
    assert 0.0 <= on_disk["sysu/all/single/mAP"] <= 100.0
    header, *rows = (tmp_path / "cmc.csv").read_text().splitlines()
    assert header == "rank,headline,sysu/all/single,sysu/indoor/single"
    first = rows[0].split(",")
    assert first[1] == first[2]  # the headline column is the headline protocol's curve
    for png in ("cmc.png", "ranked_list.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the chance level of the headline protocol: random unit embeddings on the same queries
    chance = {m: on_disk[f"chance/sysu/all/single/{m}"] for m in ("rank1", "mAP", "mINP")}
    assert 0.0 < chance["rank1"] < chance["mAP"] < 100.0
    assert not any(k.startswith("chance/sysu/indoor") for k in on_disk)  # headline only


def test_summary_prints_the_chance_level_next_to_the_result(tiny_shards, model_file, tmp_path) -> None:
    from vireid.stages import summary

    shards, cfg = tiny_shards
    cfg = replace(cfg, eval={"trials": 2, "sysu_modes": ["all"], "sysu_shots": ["single"]})
    metrics = evaluate_stage.evaluate(cfg, model_file, shards, tmp_path / "eval", torch.device("cpu"))
    text = summary.main(["--outputs", str(tmp_path)])
    line = next(x for x in text.splitlines() if "chance (random embeddings)" in x)
    assert f"mAP {metrics['chance/sysu/all/single/mAP']:.2f}" in line
    ratio = metrics["sysu/all/single/mAP"] / metrics["chance/sysu/all/single/mAP"]
    assert f"mAP {ratio:.1f}x chance" in line


def test_evaluate_refuses_a_regdb_model_of_another_trial(tiny_shards, model_file, tmp_path) -> None:
    shards, cfg = tiny_shards
    obj = read_model_file(model_file)
    save_model(tmp_path / "regdb.pt", obj["model"], dict(obj["meta"], dataset="regdb", regdb_trial=1))
    regdb_cfg = replace(cfg, data={"dataset": "regdb", "regdb_trial": 2}, eval={"headline": "regdb/v2t/mAP"})
    with pytest.raises(TrialMismatchError, match="trial 1 cannot be tested on trial 2"):
        evaluate_stage.evaluate(regdb_cfg, tmp_path / "regdb.pt", shards, tmp_path, torch.device("cpu"))
    with pytest.raises(CheckpointMismatchError, match="dataset"):
        evaluate_stage.evaluate(cfg, tmp_path / "regdb.pt", shards, tmp_path, torch.device("cpu"))
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("max_rank", [20, 27])
def test_eval_max_rank_sets_the_cmc_length(tiny_shards, model_file, tmp_path, max_rank) -> None:
    shards, cfg = tiny_shards
    cfg = replace(cfg, eval={"trials": 1, "sysu_modes": ["all"], "sysu_shots": ["single"], "max_rank": max_rank})
    evaluate_stage.evaluate(cfg, model_file, shards, tmp_path, torch.device("cpu"))
    header, *rows = (tmp_path / "cmc.csv").read_text().splitlines()
    assert len(rows) == max_rank and rows[-1].split(",")[0] == str(max_rank)


@pytest.mark.parametrize("stable", [False, True])
def test_eval_stable_argsort_reaches_the_ranking(tiny_shards, model_file, tmp_path, monkeypatch,
                                                 stable) -> None:
    """Every distance ties (equal features): the rankings sort with the tie rule of the config."""
    import numpy as np

    from vireid.evaluation import metrics, report

    shards, cfg = tiny_shards
    cfg = replace(cfg, eval={"trials": 1, "sysu_modes": ["all"], "sysu_shots": ["single"],
                             "stable_argsort": stable})
    monkeypatch.setattr(evaluate_stage, "features",
                        lambda model, table, cfg, device: np.ones((len(table.identity), 8), np.float32))
    kinds: list[object] = []
    real_argsort = np.argsort

    class _Np:  # numpy as the ranking code sees it, with argsort recording its sort kind
        def __getattr__(self, name: str) -> object:
            return getattr(np, name)

        @staticmethod
        def argsort(a, *args, **kwargs):  # type: ignore[no-untyped-def]
            kinds.append(kwargs.get("kind"))
            return real_argsort(a, *args, **kwargs)

    monkeypatch.setattr(metrics, "np", _Np())
    monkeypatch.setattr(report, "np", _Np())
    evaluate_stage.evaluate(cfg, model_file, shards, tmp_path, torch.device("cpu"))
    # the protocol rankings (metrics) and the ranked-list plot (report) both sort with it
    assert kinds and set(kinds) == {"stable" if stable else None}
