"""Config-time checks: eval.headline against the dataset, the protocols run and the metric
names; non-finite numbers; milestones and warm-up within train.epochs; a parameters file
that is empty, lacks a section or is not YAML. Each error names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._params import REPO, params_file
from vireid.config import Config, ConfigError, check_schedule, config_from_dict
from vireid.stages.entry import load_config


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"eval": {"headline": "sysu/all/single/map"}},
         "eval.headline: 'sysu/all/single/map': metric 'map' is not one of"),
        ({"eval": {"headline": "sysu/all/single/mAP", "sysu_modes": ["indoor"]}},
         "eval.headline: 'sysu/all/single/mAP': mode 'all' is not run (eval.sysu_modes: ['indoor'])"),
        ({"eval": {"headline": "sysu/indoor/multi/rank1", "sysu_shots": ["single"]}},
         "eval.headline: 'sysu/indoor/multi/rank1': shot 'multi' is not run"),
        ({"eval": {"headline": "sysu/all/mAP"}}, "eval.headline: 'sysu/all/mAP' is not sysu/<mode>/<shot>/<metric>"),
        ({"eval": {"headline": "market/mAP"}}, "eval.headline: 'market/mAP' must start with sysu/ or regdb/"),
        ({"data": {"dataset": "regdb"}},
         "eval.headline: 'sysu/all/single/mAP' is a sysu metric but data.dataset is 'regdb' (e.g. regdb/v2t/mAP)"),
        ({"data": {"dataset": "regdb"}, "eval": {"headline": "regdb/x2y/mAP"}},
         "eval.headline: 'regdb/x2y/mAP': direction 'x2y' is not one of ['v2t', 't2v']"),
        ({"loss": {"temperature": float("nan")}}, "loss.temperature: must be a finite number, got nan"),
        ({"model": {"gem_p": float("inf")}}, "model.gem_p: must be a finite number, got inf"),
        ({"tune": {"temperature_max": float("inf")}}, "tune.temperature_max: must be a finite number"),
    ],
)
def test_config_time_errors(params: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(params)
    assert str(err.value).startswith(message)


def test_valid_headlines() -> None:
    assert config_from_dict({"data": {"dataset": "regdb"}, "eval": {"headline": "regdb/t2v/mINP"}})
    assert config_from_dict({"eval": {"headline": "sysu/indoor/multi/rank20"}})


def test_metric_names_are_the_evaluators() -> None:
    from vireid import config
    from vireid.evaluation import metrics, regdb

    assert config.METRIC_NAMES == metrics.METRIC_NAMES
    assert config.REGDB_DIRECTIONS == regdb.REGDB_DIRECTIONS


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"epochs": 10, "milestones": [7, 12]}, "train.milestones[1]: 12 is outside 1..9"),
        ({"epochs": 10, "milestones": [10]}, "train.milestones[0]: 10 is outside 1..9"),
        ({"epochs": 10, "milestones": [0, 5]}, "train.milestones[0]: 0 is outside 1..9"),
        ({"epochs": 4, "warmup_epochs": 5, "milestones": []}, "train.warmup_epochs: 5 is beyond train.epochs (4)"),
    ],
)
def test_schedule_beyond_epochs_is_refused_in_a_params_file(tmp_path: Path, train: dict, message: str) -> None:
    cfg = config_from_dict({"train": train})  # a Config may hold it (the tune stage shortens epochs)
    with pytest.raises(ConfigError, match=r"^" + message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        check_schedule(cfg)
    path = params_file(tmp_path / "p.yaml", {"train": train})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_repository_params_pass_every_check() -> None:
    cfg = load_config(REPO / "params.yaml")
    check_schedule(cfg)
    assert isinstance(cfg, Config)


def test_params_file_errors_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{empty}: is empty"):
        load_config(empty)
    listing = tmp_path / "list.yaml"
    listing.write_text("- data\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{listing}: the top level must be a mapping"):
        load_config(listing)
    text = params_file(tmp_path / "full.yaml").read_text(encoding="utf-8")
    partial = tmp_path / "partial.yaml"
    partial.write_text(text[:text.index("loss:")] + text[text.index("model:"):], encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{partial}: no loss section"):
        load_config(partial)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  dataset: sysu\n bad indent: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{broken}:3:2: not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match=f"^{tmp_path}: is a folder"):
        load_config(tmp_path)
    bad = params_file(tmp_path / "bad.yaml", {"loss": {"temperature": ".nan"}})
    bad.write_text(bad.read_text(encoding="utf-8").replace("'.nan'", ".nan"), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{bad}: loss.temperature: must be a finite number, got nan"):
        load_config(bad)
