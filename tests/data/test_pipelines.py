"""pipelines.synth and pipelines.prepare end to end on a tiny params file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._params import params_file
from vireid.config import ConfigError
from vireid.data.shards import ShardSet
from vireid.stages import prepare as prepare_stage
from vireid.stages import synth as synth_stage
from vireid.stages.entry import load_config


def _params(tmp_path: Path, **data: object) -> Path:
    params = {"data": {"root": str(tmp_path / "raw" / "SYSU-MM01"), "image_height": 32, "image_width": 16,
                       "holdout_identities": 1,
                       "synth": {"sysu_identities": 12, "sysu_images_per_camera": 1, "regdb_identities": 4,
                                 "regdb_images_per_modality": 2, "image_height": 32, "image_width": 16},
                       **data}}
    if data.get("dataset") == "regdb":
        params["eval"] = {"headline": "regdb/v2t/mAP"}
    return params_file(tmp_path / "params.yaml", params)


def test_synth_then_prepare_sysu(tmp_path: Path) -> None:
    params = _params(tmp_path)
    synth_stage.main(["--params", str(params)])
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["SYSU-MM01"]
    prepare_stage.main(["--params", str(params), "--out", str(tmp_path / "shards")])
    ss = ShardSet(tmp_path / "shards")
    assert ss.split_names == ("train", "val", "query", "gallery") and ss.manifest["dataset"] == "sysu"
    assert len(ss.table("query")) == 8 * 2


def test_synth_regdb_and_real_data_switch(tmp_path: Path) -> None:
    params = _params(tmp_path, dataset="regdb", root=str(tmp_path / "raw" / "RegDB"))
    synth_stage.main(["--params", str(params)])
    assert len(list((tmp_path / "raw" / "RegDB" / "idx").iterdir())) == 40
    real = _params(tmp_path, synthetic=False, root=str(tmp_path / "real"))
    synth_stage.main(["--params", str(real)])
    assert not (tmp_path / "real").exists()


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params.yaml: parameters file not found"):
        load_config(tmp_path / "params.yaml")
    params_file(tmp_path / "p.yaml", {"data": {"synth": {"sysu_identities": 5}}})
    with pytest.raises(ConfigError, match="p.yaml: data.synth.sysu_identities"):
        load_config(tmp_path / "p.yaml")
