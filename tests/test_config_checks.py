"""Config-time checks: eval.headline against the dataset, the protocols run and the metric
names; non-finite numbers; milestones and warm-up within train.epochs; a parameters file
that is empty, lacks a section or is not YAML. Each error names the file and the key."""

from __future__ import annotations

import re
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


def _with(tmp_path: Path, old: str, new: str) -> Path:
    """The repository's params.yaml with the first ``old`` replaced by ``new``."""
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_params_are_read_as_yaml_1_2_like_dvc(tmp_path: Path) -> None:
    """Issue 25 item 9: ``lr: 1e-3`` is the float DVC's YAML 1.2 reader sees (PyYAML's 1.1
    resolver made it the string '1e-3', refused as "not a number"); ``yes`` is a string to
    both, not a boolean."""
    lr = re.search(r"\n  lr: (\S+)", (REPO / "params.yaml").read_text(encoding="utf-8")).group(1)
    assert load_config(_with(tmp_path, f"\n  lr: {lr}", "\n  lr: 1e-3")).train.lr == 0.001
    assert load_config(_with(tmp_path, f"\n  lr: {lr}", "\n  lr: 2.5E+1")).train.lr == 25.0
    with pytest.raises(ConfigError, match=r"eval.flip: must be true or false, got 'yes'"):
        load_config(_with(tmp_path, "\n  flip: true", "\n  flip: yes"))


def test_duplicate_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    """Issue 25 item 9: a key given twice was accepted (the last one won); DVC refuses it."""
    path = _with(tmp_path, "\ntrain:\n", "\ntrain:\n  epochs: 3\n")
    text = path.read_text(encoding="utf-8").splitlines()
    first = text.index("  epochs: 3") + 1
    second = next(i for i, ln in enumerate(text) if ln.startswith("  epochs: ") and i + 1 != first) + 1
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:{second}:3: not valid YAML \(duplicate key "
                                          rf"'epochs', first given on line {first}\)$"):
        load_config(path)


def test_unknown_keys_of_mixed_types_are_one_config_error(tmp_path: Path) -> None:
    """Issue 25 item 9: unknown keys ``1:`` and ``foo:`` in one section crashed with a
    TypeError (sorting an int with a str)."""
    path = _with(tmp_path, "\ntrain:\n", "\ntrain:\n  1: a\n  foo: b\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: train.1: unknown key"):
        load_config(path)
    path = _with(tmp_path, "\ntrain:\n", "\n1: x\nfoo: y\ntrain:\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: 1: unknown section"):
        load_config(path)
