"""bench/ablation.py on both layouts (issue #22: the chosen reading is also compared on RegDB):
its chance level is the evaluate stage's, and on a RegDB draw it trains, evaluates the RegDB
headline on the configured trial and reports what the evaluate stage gives its kept model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._bench import load_bench
from tests._params import REPO, params_file
from vireid.config import Config, config_to_dict, replace
from vireid.data.shards import ShardSet
from vireid.stages.evaluate import evaluate

ab = load_bench("ablation")
CPU = torch.device("cpu")


def test_sysu_chance_is_the_evaluate_stages(tiny_shards: tuple[Path, Config], model_file: Path,
                                            tmp_path: Path) -> None:
    shards, cfg = tiny_shards
    cfg = ab.headline_only(cfg)  # all-search single-shot (the tiny draw has too few images for multi-shot)
    metrics = evaluate(cfg, model_file, shards, tmp_path / "eval", CPU)
    chance = ab.chance_level(cfg, shards)
    for m in ab.METRICS:
        assert chance[m] == pytest.approx(metrics[f"chance/sysu/all/single/{m}"], abs=1e-6), m
    assert 0.0 < chance["mAP"] < 100.0


@pytest.mark.parametrize("direction", ["v2t", "t2v"])
def test_regdb_chance_is_the_evaluate_stages(tiny_regdb: tuple[Path, Config], regdb_model_file: Path,
                                             tmp_path: Path, direction: str) -> None:
    shards, cfg = tiny_regdb
    cfg = replace(cfg, eval={"headline": f"regdb/{direction}/mAP"})
    metrics = evaluate(cfg, regdb_model_file, shards, tmp_path / "eval", CPU)
    chance = ab.chance_level(cfg, shards)
    for m in ab.METRICS:
        assert chance[m] == pytest.approx(metrics[f"chance/regdb/{direction}/{m}"], abs=1e-6), m
    # the two directions' galleries differ in size: their chance levels differ (the test can fail)
    other = ab.chance_level(replace(cfg, eval={"headline": f"regdb/{'t2v' if direction == 'v2t' else 'v2t'}/mAP"}),
                            shards)
    assert other["mAP"] != pytest.approx(chance["mAP"])


def test_headline_only_keeps_the_sysu_mode_and_shot_and_leaves_regdb_as_is(tiny_regdb: tuple[Path, Config]) -> None:
    sysu = replace(Config(), eval={"headline": "sysu/indoor/multi/mAP", "sysu_modes": ["all", "indoor"],
                                   "sysu_shots": ["single", "multi"]})
    one = ab.headline_only(sysu)
    assert (one.eval.sysu_modes, one.eval.sysu_shots) == (("indoor",), ("multi",))
    _, regdb = tiny_regdb
    assert ab.headline_only(regdb) == regdb


def test_ablation_on_a_regdb_draw_reports_what_evaluate_gives_its_kept_model(
        tiny_regdb: tuple[Path, Config], tmp_path: Path) -> None:
    _, cfg = tiny_regdb
    plain = config_to_dict(cfg)
    plain["data"]["root"] = str(tmp_path / "unused")  # the script generates its draw itself
    plain["data"]["regdb_trial"] = 2
    params = params_file(tmp_path / "params.yaml", plain)
    out, keep = tmp_path / "out.json", tmp_path / "keep"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "ablation.py"), "--params", str(params),
                           "--seeds", "0", "--configs", "baseline", "--threads", "1", "--json", str(out),
                           "--keep", str(keep)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["protocol"] == "regdb/v2t/mAP"
    manifest = ShardSet(keep / "shards").manifest
    assert manifest.get("regdb_trial") == 2
    (run,) = data["results"]["baseline"]
    assert run["seed"] == 0 and Path(run["model_file"]).exists()
    # the reported selected-epoch figures are the evaluate stage's on the kept model
    metrics = evaluate(replace(cfg, data={"regdb_trial": 2}), Path(run["model_file"]), keep / "shards",
                       tmp_path / "eval", CPU)
    for m in ab.METRICS:
        assert run["selected"][m] == pytest.approx(metrics[f"regdb/v2t/{m}"], abs=1e-6), m
        assert data["chance"][m] == pytest.approx(metrics[f"chance/regdb/v2t/{m}"], abs=1e-6), m
