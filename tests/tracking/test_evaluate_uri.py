"""``vireid evaluate --model models:/...``: a registered model evaluated on any prepared
dataset and protocol, with its provenance; foreign formats refused as ``vireid search`` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._params import params_file
from tests.tracking.conftest import IMAGE_H, IMAGE_W
from tests.tracking.test_model_safety import Payload, _log, _register
from vireid.cli import main
from vireid.config import SyntheticConfig, config_from_dict
from vireid.data.prepare import prepare
from vireid.data.synthetic import generate_sysu

TREE = SyntheticConfig(seed=7, sysu_identities=12, sysu_images_per_camera=2, sysu_val_fraction=0.15,
                       sysu_test_fraction=0.5, image_height=IMAGE_H, image_width=IMAGE_W)


@pytest.fixture(scope="module")
def project(target, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(params.yaml, shards)``: a SYSU-layout dataset the tiny model never saw, prepared at
    its input size, and parameters whose ``track`` is the store of ``target``."""
    base = tmp_path_factory.mktemp("eval-uri")
    generate_sysu(base / "SYSU-MM01", TREE)
    data = {"dataset": "sysu", "root": str(base / "SYSU-MM01"), "synthetic": False, "holdout_identities": 0,
            "image_height": IMAGE_H, "image_width": IMAGE_W}
    params = params_file(base / "params.yaml", {
        "data": data, "eval": {"trials": 1, "sysu_modes": ["all"], "sysu_shots": ["single"]},
        "track": {"tracking_uri": target.tracking_uri}})
    shards = prepare(config_from_dict({"data": data}).data, base / "shards")
    return params, shards


def test_evaluate_a_registered_model_with_its_provenance(target, logged, project, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from vireid.tracking import register

    run_id, model_uri = logged
    register(target.tracking_uri, model_name="eval-uri", model_uri=model_uri, run_id=run_id,
             protocol="p", headline="sysu/all/single/mAP", value=1.0, data_hash="d", git_commit="c")
    params, shards = project
    out = tmp_path / "eval"
    code = main(["evaluate", "--params", str(params), "--model", "models:/eval-uri@champion",
                 "--shards", str(shards), "--out", str(out), "--run-file", str(tmp_path / "none.json")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["sysu/all/single/mAP"] <= 100.0 and metrics["sysu/all/single"]["trials"] == 1
    prov = metrics["provenance"]
    assert prov["model_uri"] == "models:/eval-uri@champion" and prov["model_version"] == "1"
    assert prov["model_name"] == "eval-uri" and prov["model_run_id"] == run_id
    assert prov["model_dataset"] == "sysu" and prov["model_arch"] == "tiny" and prov["model_sha256"] is None
    manifest = json.loads((shards / "manifest.json").read_text())
    assert prov["shards_sha256"] == manifest["sha256_total"] and prov["data_kind"] == "real"
    assert prov["protocol"] == "sysu/all/single@community+trials1"  # eval.trials 1: not the default 10
    for name in ("cmc.csv", "cmc.png", "ranked_list.png"):
        assert (out / name).is_file()
    # the same model through runs:/ gives the same numbers
    out2 = tmp_path / "eval-run"
    assert main(["evaluate", "--params", str(params), "--model", f"runs:/{run_id}/model",
                 "--shards", str(shards), "--out", str(out2), "--run-file", str(tmp_path / "none.json")]) == 0
    again = json.loads((out2 / "metrics.json").read_text())
    assert again["sysu/all/single/mAP"] == metrics["sysu/all/single/mAP"]
    assert again["provenance"]["model_run_id"] == run_id and "model_version" not in again["provenance"]


def test_evaluate_refuses_a_pickled_model_in_one_line(target, project, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "marker.txt"
    run_id, model_uri = _log(target.tracking_uri, "evil-eval", Payload(marker), serialization_format="pickle")
    marker.unlink(missing_ok=True)
    _register(target.tracking_uri, run_id, model_uri, "evil-eval")
    params, shards = project
    capsys.readouterr()  # MLflow's messages while logging the model above
    code = main(["evaluate", "--params", str(params), "--model", "models:/evil-eval@champion",
                 "--shards", str(shards), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [line for line in err if line.startswith("error:")]
    assert errors == [err[-1]] and "pickle" in err[-1] and "models:/evil-eval@champion" in err[-1]
    assert not marker.exists() and not (tmp_path / "eval" / "metrics.json").exists()
