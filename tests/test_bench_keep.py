"""bench/ablation.py --keep and bench/loss_gradients.py --model: a kept run's model file is
found by its configuration's name and measured under the settings it was trained with."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._bench import load_bench
from vireid.config import Config, config_to_dict, replace

ab = load_bench("ablation")
lg = load_bench("loss_gradients")


def test_kept_model_names_are_one_file_per_configuration_and_seed(tmp_path: Path) -> None:
    names = [ab.kept_model_path(tmp_path, n, s).name for n in ab.CONFIGS for s in (0, 4)]
    assert len(set(names)) == len(names)
    assert ab.kept_model_path(tmp_path, "a+b+c+e", 4).name == "a+b+c+e-seed4.pt"
    assert ab.kept_model_path(tmp_path, "+ distillation (dynamic) = full", 0).name == \
        "+_distillation_dynamic_full-seed0.pt"
    assert ab.kept_model_path(tmp_path, "b: infer toward other-modality memory", 1).name == \
        "b_infer_toward_other-modality_memory-seed1.pt"


def test_keep_model_copies_the_selected_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "selected.pt").write_bytes(b"selected")
    (run / "last.pt").write_bytes(b"last")
    dest = ab.keep_model(run, tmp_path / "keep", "a+b+c+e", 2)
    assert dest == tmp_path / "keep" / "a+b+c+e-seed2.pt" and dest.read_bytes() == b"selected"
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]
    with pytest.raises(FileNotFoundError):  # a run that wrote no model: nothing kept, no stray file
        ab.keep_model(tmp_path / "empty", tmp_path / "keep", "baseline", 0)
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]


def test_a_model_is_measured_under_its_training_config() -> None:
    params = Config()
    trained = replace(params, **ab.CONFIGS["a+b+c+e"])
    assert trained.model != params.model and trained.loss != params.loss  # the test can fail
    cfg = lg.trained_config(replace(params, train={"seed": 7}), {"config": config_to_dict(trained)})
    assert cfg.model == trained.model and cfg.loss == trained.loss
    assert cfg.loss.distill_start == pytest.approx(0.3) and cfg.model.dual_probe
    assert cfg.train.seed == 7  # the rest from --params
    assert lg.trained_config(params, {}) == params  # no config in the file: params as given
