"""metrics.json layout, CMC CSV, CMC and ranked-list PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vireid.evaluation.metrics import evaluate_ranking
from vireid.evaluation.regdb import aggregate_regdb
from vireid.evaluation.report import (
    build_metrics,
    mean_curve,
    plot_cmc,
    plot_ranked_list,
    protocol_entry,
    regdb_entries,
    top_k,
    write_cmc_csv,
    write_metrics,
)

TRIAL = {"rank1": 0.5, "rank5": 0.7, "rank10": 0.8, "rank20": 0.9, "mAP": 0.4, "mINP": 0.2}


def test_metrics_json_layout(tmp_path: Path) -> None:
    t2 = {k: v + 0.1 for k, v in TRIAL.items()}
    entries = {"sysu/all/single": protocol_entry([TRIAL, t2], sampler="community")}
    r = evaluate_ranking(np.array([[0.0, 1.0]]), [1], [1, 2], sysu_removal=False)
    entries |= regdb_entries(aggregate_regdb({1: {"v2t": r}, 2: {"v2t": r.summary()}}))
    path = write_metrics(tmp_path / "out" / "metrics.json", entries)
    data = json.loads(path.read_text())
    assert data["units"] == "percent" and data["std_ddof"] == 0
    e = data["sysu/all/single"]
    assert e["sampler"] == "community" and e["trials"] == 2 and e["trial_ids"] == [0, 1]
    assert e["mean"]["mAP"] == pytest.approx(45.0) and e["std"]["mAP"] == pytest.approx(5.0)
    assert e["per_trial"][1] == {"trial": 1, **{k: pytest.approx(100 * v) for k, v in t2.items()}}
    assert data["sysu/all/single/mAP"] == pytest.approx(45.0)
    assert data["regdb/v2t"]["trial_ids"] == [1, 2] and data["regdb/v2t/rank1"] == 100.0
    assert set(data) >= {f"sysu/all/single/{k}" for k in TRIAL}
    assert not list(tmp_path.glob("out/.*"))  # no temporary files left
    with pytest.raises(ValueError, match="lacks 'sampler'"):
        build_metrics({"x": {"mean": {}}})


def test_cmc_csv_and_plot(tmp_path: Path) -> None:
    curves = {"sysu/all/single": np.array([0.5, 0.75, 1.0]), "regdb/v2t": np.array([0.9, 1.0])}
    csv = write_cmc_csv(tmp_path / "cmc.csv", curves).read_text().splitlines()
    assert csv[0] == "rank,sysu/all/single,regdb/v2t"
    assert csv[1] == "1,50.000000,90.000000" and csv[3] == "3,100.000000,100.000000"
    np.testing.assert_allclose(mean_curve([np.array([0.2, 0.4]), np.array([0.4])], 3), [0.3, 0.4, 0.4])
    png = plot_cmc(tmp_path / "cmc.png", curves)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_ranked_list_picture(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gallery = [np.full((32, 16, 3), 40 * i % 256, dtype=np.uint8) for i in range(12)]
    query = [rng.integers(0, 255, (3, 32, 16), dtype=np.uint8)]  # [C,H,W] accepted
    dist = rng.random((1, 12))
    ranked = top_k(dist, 10)
    assert ranked.shape == (1, 10) and ranked[0, 0] == int(np.argmin(dist))
    g_ids = np.arange(12) % 3
    correct = g_ids[ranked] == 0
    png = plot_ranked_list(tmp_path / "ranked.png", [0], ranked, correct, query, lambda i: gallery[i])
    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    red = ((rgb[:, 0] > 200) & (rgb[:, 1] < 60) & (rgb[:, 2] < 60)).sum()
    green = ((rgb[:, 1] > 150) & (rgb[:, 0] < 100) & (rgb[:, 2] < 100)).sum()
    assert red > 50 and green > 50  # both border colours drawn
    with pytest.raises(ValueError, match="uint8"):
        plot_ranked_list(tmp_path / "x.png", [0], ranked, correct, [np.zeros((4, 4), np.float32)], gallery)
