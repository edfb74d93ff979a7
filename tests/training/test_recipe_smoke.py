"""The SYSU-MM01 recipe end to end on the CPU: ``vireid recipe sysu_agw``, then only the sizes
shrunk (a tiny tree, 64x32 images, P=4, one epoch without warm-up or decay, one gallery
trial; the CPU in place of the GPU this machine lacks), then ``vireid synth|prepare|train|
evaluate|register`` (the stages ``dvc repro`` runs): the real-data path (a dataset read, not
generated; ResNet-50 from a local ImageNet-format weights file; no held-out identities; full
epochs: the tree's 32 visible training images are 2 batches of P*K = 16) executes."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet50

from tests._params import REPO
from vireid.cli import main
from vireid.config import SyntheticConfig
from vireid.data.synthetic import generate_sysu
from vireid.recipes import set_params
from vireid.stages.entry import load_config
from vireid.training.checkpoint import read_model_file

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

TREE = SyntheticConfig(seed=5, sysu_identities=12, sysu_images_per_camera=2, sysu_val_fraction=0.15,
                       sysu_test_fraction=0.5, image_height=64, image_width=32)


def _stage(stage: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    """``vireid <stage>`` in the project folder (the working directory); its output and log."""
    caplog.clear()
    code = main([stage, "--params", "params.yaml"])
    out = capsys.readouterr()
    output = out.out + out.err + caplog.text
    assert code == 0, f"{stage}:\n{output[-3000:]}"
    return output


@pytest.mark.timeout(900)  # ~2 min on 2 idle cores; 5 min measured with other Ray tests running
def test_sysu_recipe_runs_end_to_end_with_only_the_sizes_shrunk(tmp_path: Path, capsys, caplog,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    generate_sysu(tmp_path / "SYSU-MM01", TREE)  # a dataset tree in SYSU-MM01's layout, read as real
    torch.manual_seed(0)
    weights = tmp_path / "resnet50-imagenet-format.pth"
    torch.save(resnet50(weights=None).state_dict(), weights)
    project = tmp_path / "project"
    project.mkdir()
    shutil.copyfile(REPO / "params.yaml", project / "params.yaml")
    assert main(["recipe", "sysu_agw", "--params", str(project / "params.yaml"),
                 "--recipes", str(REPO / "recipes")]) == 0
    capsys.readouterr()
    set_params(project / "params.yaml", {
        "data.root": str(tmp_path / "SYSU-MM01"), "data.image_height": 64, "data.image_width": 32,
        "model.weights_path": str(weights),
        "train.identities_per_batch": 4, "train.epochs": 1, "train.warmup_epochs": 0,
        "train.milestones": [], "train.use_gpu": False, "train.cpus_per_worker": 1,
        "eval.trials": 1, "eval.sysu_shots": ["single"],  # multi-shot needs 10 images per camera
    }, "sizes of the smoke test")
    cfg = load_config(project / "params.yaml")
    assert (cfg.model.arch, cfg.model.pretrained, cfg.data.synthetic, cfg.data.holdout_identities,
            cfg.train.iters_per_epoch, cfg.train.instances_per_modality) == ("resnet50", True, False, 0, 0, 4)

    monkeypatch.chdir(project)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    caplog.set_level(logging.INFO)
    assert "nothing to generate" in _stage("synth", capsys, caplog)
    _stage("prepare", capsys, caplog)
    manifest = json.loads((project / "data/shards/manifest.json").read_text())
    assert manifest["extra"]["data_kind"] == "real" and manifest["extra"]["holdout_identities"] == 0
    log = _stage("train", capsys, caplog)
    assert "trained 1 epochs" in log and "on real data: an epoch sees" not in log  # full epochs
    history = (project / "outputs/train/history.csv").read_text().splitlines()
    header = history[0].split(",")
    assert len(history) == 2 and float(history[1].split(",")[header.index("steps")]) == 2  # a full pass
    model = read_model_file(project / "outputs/train/model.pt")
    assert model["meta"]["config"]["model"]["arch"] == "resnet50"
    assert model["meta"]["image_height"] == 64 and model["meta"]["selected_epoch"] == 1  # no holdout: last
    _stage("evaluate", capsys, caplog)
    metrics = json.loads((project / "outputs/eval/metrics.json").read_text())
    assert 0.0 <= metrics["sysu/all/single/mAP"] <= 100.0
    assert metrics["provenance"]["data_kind"] == "real"
    _stage("register", capsys, caplog)
    registration = json.loads((project / "outputs/register/registration.json").read_text())
    assert registration["headline"] == "sysu/all/single/mAP"
