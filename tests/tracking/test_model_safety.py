"""No foreign code on load: a pickled (or code-carrying) MLflow model in a real local store
is refused before anything of it is deserialised, by the loader and by ``vireid search``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vireid.cli import main
from vireid.tracking import UnsafeModelError, load_logged_embedder
from vireid.tracking.store import client, use_tracking_uri


def plant_marker(path: str) -> nn.Module:
    """What unpickling the payload calls: proof that code ran on load."""
    Path(path).write_text("code ran on load", encoding="utf-8")
    return nn.Linear(2, 2)


class Payload(nn.Module):
    """A module whose unpickling calls :func:`plant_marker` (a real malicious pickle)."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)
        self.lin = nn.Linear(2, 2)

    def __reduce__(self):  # noqa: D105
        return (plant_marker, (self.marker,))


def _register(tracking_uri: str, run_id: str, model_uri: str, name: str) -> None:
    c = client(tracking_uri)
    c.create_registered_model(name)
    with use_tracking_uri(tracking_uri):
        mv = c.create_model_version(name, model_uri, run_id=run_id)
    c.set_registered_model_alias(name, "champion", mv.version)


def _log(tracking_uri: str, experiment: str, model: nn.Module, **kwargs) -> tuple[str, str]:
    import mlflow

    from vireid.tracking.store import ensure_experiment

    exp = ensure_experiment(tracking_uri, experiment)
    with use_tracking_uri(tracking_uri), mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.pytorch.log_model(model, name="model", pip_requirements=["torch"], **kwargs)
    return run.info.run_id, info.model_uri


@pytest.fixture(scope="module")
def evil(target, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """``(run_id, model_uri, marker)`` of a pickle-format model registered as evil@champion."""
    marker = tmp_path_factory.mktemp("evil") / "marker.txt"
    run_id, model_uri = _log(target.tracking_uri, "evil", Payload(marker), serialization_format="pickle")
    marker.unlink(missing_ok=True)  # logging does not load it; be sure the test starts clean
    _register(target.tracking_uri, run_id, model_uri, "evil")
    return run_id, model_uri, marker


@pytest.mark.parametrize("uri", ["models:/evil@champion", "models:/evil/1", "runs"])
def test_pickled_model_is_refused_before_it_is_unpickled(target, evil, uri: str) -> None:
    run_id, _, marker = evil
    uri = f"runs:/{run_id}/model" if uri == "runs" else uri
    with pytest.raises(UnsafeModelError, match=r"serialised with pickle \(model\.pth"):
        load_logged_embedder(target.tracking_uri, uri)
    assert not marker.exists(), "the pickled model's code ran"


def test_the_payload_is_real(target, evil, monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: MLflow's own loader with its 3.17 default (pickle allowed) runs the payload."""
    import mlflow

    _, _, marker = evil
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    with use_tracking_uri(target.tracking_uri):
        mlflow.pytorch.load_model("models:/evil@champion", weights_only=False)
    assert marker.read_text(encoding="utf-8") == "code ran on load"
    marker.unlink()


def test_search_cli_refuses_the_pickled_model_in_one_line(target, evil, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    _, _, marker = evil
    rng = np.random.default_rng(0)
    (tmp_path / "g").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(tmp_path / "g" / f"{i}.png")
    out = tmp_path / "out.png"
    code = main(["search", str(tmp_path / "g" / "0.png"), "--gallery", str(tmp_path / "g"),
                 "--model", "models:/evil@champion", "--tracking-uri", target.tracking_uri,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "pickle" in err and "models:/evil@champion" in err
    assert not marker.exists() and not out.exists()


def test_model_with_a_code_folder_is_refused(target, tmp_path: Path) -> None:
    """pt2 weights, but a code folder that mlflow.pytorch.load_model would put on sys.path."""
    import sys

    module = tmp_path / "json.py"  # would shadow the standard library's json
    marker = tmp_path / "imported.txt"
    module.write_text(f"open({str(marker)!r}, 'w').write('imported')\n", encoding="utf-8")
    run_id, model_uri = _log(target.tracking_uri, "code", nn.Linear(3, 2).eval(), serialization_format="pt2",
                             input_example=np.zeros((2, 3), dtype=np.float32), code_paths=[str(module)])
    before = list(sys.path)
    with pytest.raises(UnsafeModelError, match="code folder"):
        load_logged_embedder(target.tracking_uri, model_uri)
    assert sys.path == before and not marker.exists()


def test_own_pt2_model_passes_the_checks(target, logged, tiny_model) -> None:
    _, model_uri = logged
    module, meta = load_logged_embedder(target.tracking_uri, model_uri)
    x = torch.randn(3, 3, meta["image_height"], meta["image_width"])
    m = torch.tensor([0, 1, 1])
    with torch.no_grad():
        torch.testing.assert_close(module(x, m), tiny_model.embed(x, m), rtol=1e-4, atol=1e-5)


def test_train_stage_loads_torchvision_weights_weights_only(tmp_path: Path) -> None:
    """torchvision's cached ImageNet weights are read with weights_only=False by default; the
    train and tune stages force weights-only loading and the loader asks for it as well, so a
    planted cache file runs nothing."""
    from vireid.modeling.backbone import PretrainedWeightsError, load_pretrained_state
    from vireid.stages.entry import weights_only_torch_load

    marker = tmp_path / "marker.txt"
    cache = tmp_path / "hub"
    cache.mkdir()
    torch.save(Payload(marker), cache / "resnet18-f37072fd.pth")  # torchvision's cache file name
    with weights_only_torch_load(), pytest.raises(PretrainedWeightsError, match="could not obtain"):
        load_pretrained_state("resnet18", model_dir=str(cache))
    assert not marker.exists()
    # outside the stages too: the loader asks torchvision for weights_only=True itself
    with pytest.raises(PretrainedWeightsError, match="could not obtain"):
        load_pretrained_state("resnet18", model_dir=str(cache))
    assert not marker.exists()
