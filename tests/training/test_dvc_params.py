"""Each dvc.yaml stage's ``params`` are exactly the config keys its code reads: the stages run
in this process (training as its Trainer, which the stage's Ray workers run) while every read
of a config field is recorded (tests/test_dvc_stages.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._params import merged, params_file
from tests.test_dvc_stages import ReadKeys, check_reads
from tests.training.conftest import SYNTH
from vireid.config import Config, config_to_dict

# keys a stage reads only on a branch these runs do not take (SYSU, no MLflow run record)
REGDB_ONLY = {"data.regdb_trial"}


def _params(tmp_path: Path, cfg: Config, **sections: dict) -> Path:
    return params_file(tmp_path / "params.yaml", merged(config_to_dict(cfg), sections))


def test_synth_and_prepare_read_what_dvc_yaml_lists(tiny_shards, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from vireid.stages import prepare, synth

    _, cfg = tiny_shards
    params = _params(tmp_path, cfg, data={"root": str(tmp_path / "raw"), "synth": config_to_dict(SYNTH)})
    reads = ReadKeys(monkeypatch)
    synth.main(["--params", str(params)])
    check_reads("synth", reads.keys)
    reads.keys.clear()
    prepare.main(["--params", str(params), "--out", str(tmp_path / "shards")])
    check_reads("prepare", reads.keys, REGDB_ONLY)


def test_train_reads_what_dvc_yaml_lists(tiny_shards, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The train stage's own reads (driver) and its Trainer's (workers)."""
    from vireid.stages.entry import load_config
    from vireid.tracking import resolve_target
    from vireid.training.loop import Trainer

    shards, cfg = tiny_shards
    params = _params(tmp_path, cfg, train={"iters_per_epoch": 1, "epochs": 2})
    cfg = load_config(params)
    reads = ReadKeys(monkeypatch)
    cfg = reads.watch(cfg)
    resolve_target(cfg.track, tmp_path)  # as the stage does before training
    trainer = Trainer(cfg, shards)
    trainer.run_epoch()
    trainer.save_model(tmp_path / "model.pt")
    # read by the driver around the Ray run (vireid/stages/train.py, vireid/training/ray_train.py)
    for key in ("model.pretrained", "model.weights_path", "train.storage", "train.ray_address",
                "train.num_workers", "train.cpus_per_worker", "train.use_gpu", "train.max_failures"):
        section, name = key.split(".")
        getattr(getattr(cfg, section), name)
    check_reads("train", reads.keys, REGDB_ONLY)


def test_evaluate_reads_what_dvc_yaml_lists(tiny_shards, model_file, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from vireid.stages import evaluate

    shards, cfg = tiny_shards
    params = _params(tmp_path, cfg, eval={"trials": 1, "sysu_modes": ["all"], "sysu_shots": ["single"]})
    reads = ReadKeys(monkeypatch)
    evaluate.main(["--params", str(params), "--model", str(model_file), "--shards", str(shards),
                   "--out", str(tmp_path / "eval"), "--run-file", str(tmp_path / "none.json")])
    # official_perm_path: read with sysu_sampler official; track: with the train stage's run record
    check_reads("evaluate", reads.keys,
                REGDB_ONLY | {"eval.official_perm_path", "track.tracking_uri", "track.artifact_location"})
