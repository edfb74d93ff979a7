"""Recipes (recipes/*.yaml) and ``vireid recipe NAME``: the paper's runs as data, applied to
params.yaml with its comments kept and the changes printed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests._params import REPO
from vireid.cli import main
from vireid.config import Config, LossWeights
from vireid.stages.entry import load_config
from vireid.stages.train import truncated_epoch_warning
from vireid.training.schedule import lr_factor

RECIPES = REPO / "recipes"

# AGW's recipe (docs/method.md, "Training recipe (AGW)"), spelled out value by value
AGW = {
    ("model", "arch"): "resnet50", ("model", "pretrained"): True,
    ("data", "image_height"): 288, ("data", "image_width"): 144,
    ("data", "synthetic"): False, ("data", "holdout_identities"): 0,
    ("train", "identities_per_batch"): 8, ("train", "instances_per_modality"): 4,
    ("train", "epochs"): 80, ("train", "warmup_epochs"): 10, ("train", "milestones"): (20, 50),
    ("train", "lr"): 0.1, ("train", "backbone_lr"): 0.01, ("train", "momentum"): 0.9,
    ("train", "weight_decay"): 5e-4, ("train", "iters_per_epoch"): 0, ("train", "use_gpu"): True,
}
DATASET = {"sysu_agw": ("sysu", "sysu/all/single/mAP"), "regdb_agw": ("regdb", "regdb/v2t/mAP")}


def _copy_params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", path)
    return path


def _recipe(name: str, params: Path, capsys: pytest.CaptureFixture[str],
            recipes: Path = RECIPES) -> tuple[int, str, str]:
    code = main(["recipe", name, "--params", str(params), "--recipes", str(recipes)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _comments(text: str) -> list[str]:
    """Every comment of a YAML file, in order (whole-line and end-of-line)."""
    return [m.group(1).strip() for m in re.finditer(r"(?:^|\s)#(.*)$", text, re.M)]


@pytest.mark.parametrize("name", sorted(DATASET))
def test_agw_recipe_resolves_to_agws_recipe(name: str, tmp_path: Path, capsys) -> None:
    params = _copy_params(tmp_path)
    code, out, _ = _recipe(name, params, capsys)
    assert code == 0
    cfg = load_config(params)  # the whole file validates, schedule cross-checks included
    for (section, key), want in AGW.items():
        assert getattr(getattr(cfg, section), key) == want, f"{section}.{key}"
    dataset, headline = DATASET[name]
    assert cfg.data.dataset == dataset and cfg.eval.headline == headline
    assert not cfg.data.root.startswith("data/raw/")  # never the synthetic tree's place
    # the milestones mean AGW's decay: x1 after warm-up, x0.1 from epoch 20, x0.01 from 50
    t = cfg.train
    factors = [lr_factor(e, t.warmup_epochs, t.milestones) for e in (0, 9, 19, 20, 49, 50, 79)]
    assert factors == pytest.approx([0.1, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    # every other parameter is the committed file's
    before = load_config(REPO / "params.yaml")
    for section in ("model", "loss", "eval", "track"):
        for f in type(getattr(before, section)).__dataclass_fields__:
            if (section, f) not in AGW and f not in ("headline",):
                assert getattr(getattr(cfg, section), f) == getattr(getattr(before, section), f), f
    assert cfg.loss.weights == LossWeights()
    # the changes are printed, key: old -> new
    assert f"applied {RECIPES / (name + '.yaml')}" in out
    assert "  train.epochs: 40 -> 80\n" in out and "  train.milestones: [25, 35] -> [20, 50]\n" in out
    assert "  model.arch: resnet18 -> resnet50\n" in out and "  train.iters_per_epoch: 20 -> 0\n" in out
    assert "train.lr:" not in out  # unchanged values are not listed


def test_cpu_demo_is_the_committed_params_and_undoes_the_others(tmp_path: Path, capsys) -> None:
    params = _copy_params(tmp_path)
    original = params.read_bytes()
    code, out, _ = _recipe("cpu_demo", params, capsys)
    assert code == 0 and "nothing changed" in out and params.read_bytes() == original
    for name in sorted(DATASET):
        assert _recipe(name, params, capsys)[0] == 0
        assert params.read_bytes() != original
        code, out, _ = _recipe("cpu_demo", params, capsys)
        assert code == 0 and params.read_bytes() == original, name  # byte for byte
        assert "  train.epochs: 80 -> 40\n" in out


def test_recipes_keep_every_comment_and_the_list_style(tmp_path: Path, capsys) -> None:
    params = _copy_params(tmp_path)
    before = params.read_text(encoding="utf-8")
    assert _recipe("sysu_agw", params, capsys)[0] == 0
    after = params.read_text(encoding="utf-8")
    assert _comments(after) == _comments(before) and len(_comments(before)) > 30
    assert "  milestones: [20, 50]\n" in after  # a flow-style list stays one line
    assert len(after.splitlines()) == len(before.splitlines())
    assert not list(tmp_path.glob(".params.yaml.*"))  # no temporary left


def test_every_recipe_sets_keys_of_params_and_cpu_demo_covers_them_all() -> None:
    def keys(node: dict, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for k, v in node.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "weights" else {f"{prefix}{k}"}
        return out

    loaded = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in RECIPES.glob("*.yaml")}
    assert set(loaded) == {"cpu_demo", "sysu_agw", "regdb_agw"}
    assert keys(loaded["cpu_demo"]) >= keys(loaded["sysu_agw"]) | keys(loaded["regdb_agw"])
    assert isinstance(Config(), Config)


def test_unknown_recipe_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    params = _copy_params(tmp_path)
    code, _, err = _recipe("sysu", params, capsys)
    assert code == 2
    assert err == (f"error: {RECIPES / 'sysu.yaml'}: no such recipe "
                   "(known: cpu_demo, regdb_agw, sysu_agw)\n")
    assert params.read_bytes() == (REPO / "params.yaml").read_bytes()


def test_unknown_key_or_bad_value_in_a_recipe_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    params = _copy_params(tmp_path)
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "typo.yaml").write_text("train:\n  epochs: 80\n  warmup_epoch: 10\n", encoding="utf-8")
    code, out, err = _recipe("typo", params, capsys, folder)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {folder / 'typo.yaml'}: train.warmup_epoch: unknown key") and err.count("\n") == 1
    (folder / "bad.yaml").write_text("train:\n  epochs: 8\n", encoding="utf-8")  # milestone 25 beyond
    code, _, err = _recipe("bad", params, capsys, folder)
    assert code == 2 and err.startswith(f"error: {folder / 'bad.yaml'}: train.milestones[0]: 25 is outside")
    assert params.read_bytes() == (REPO / "params.yaml").read_bytes()  # nothing written


def _manifest(kind: str, visible: int) -> dict:
    return {"extra": {"data_kind": kind}, "splits": {"train": {"modality": {"visible": visible}}}}


def test_truncated_epoch_on_real_data_warns_with_the_fraction(tmp_path: Path, capsys) -> None:
    params = _copy_params(tmp_path)
    demo = load_config(params)  # iters_per_epoch 20, P*K = 32 visible images per batch
    message = truncated_epoch_warning(demo, _manifest("real", 22258))
    assert message is not None
    assert "an epoch sees 20 of the 695 batches of a full pass per worker, 2.9 % of the 22258" in message
    assert truncated_epoch_warning(demo, _manifest("synthetic", 22258)) is None  # the demo, on purpose
    assert truncated_epoch_warning(demo, _manifest("real", 640)) is None  # 20 batches = a full pass
    assert _recipe("sysu_agw", params, capsys)[0] == 0
    assert truncated_epoch_warning(load_config(params), _manifest("real", 22258)) is None  # full epochs


def test_tune_apply_writes_the_best_trial_into_params(tmp_path: Path, capsys) -> None:
    from vireid.tuning.results import best_params

    params = _copy_params(tmp_path)
    out = tmp_path / "tune"
    out.mkdir()
    best = best_params({"experiment": "tune-x", "best": {"memory_size": 32, "temperature": 2.5}})
    (out / "best_params.yaml").write_text(  # as the tune stage writes it (results.write_outputs)
        "# written by the tune stage (vireid.tuning): the best trial's S and T\n"
        + yaml.safe_dump(best, sort_keys=True), encoding="utf-8")
    before = params.read_text(encoding="utf-8")
    code = main(["tune", "apply", "--params", str(params), "--best", str(out / "best_params.yaml")])
    text = capsys.readouterr().out
    assert code == 0
    assert "  model.memory_size: 8 -> 32\n" in text and "  loss.temperature: 4.0 -> 2.5\n" in text
    cfg = load_config(params)
    assert (cfg.model.memory_size, cfg.loss.temperature) == (32, 2.5)
    after = params.read_text(encoding="utf-8")
    assert _comments(after) == _comments(before)
    assert [ln for ln in after.splitlines() if "memory_size" not in ln and "temperature:" not in ln] == \
        [ln for ln in before.splitlines() if "memory_size" not in ln and "temperature:" not in ln]
    # again: nothing to change; a missing result is one line and exit code 2
    assert main(["tune", "apply", "--params", str(params), "--best", str(out / "best_params.yaml")]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert main(["tune", "apply", "--params", str(params), "--best", str(out / "none.yaml")]) == 2
    assert capsys.readouterr().err == (f"error: {out / 'none.yaml'}: no tune result "
                                       "(run the tune stage first: uv run vireid repro tune)\n")
