"""Two-stream backbone: routing by modality, last stride, pretrained weights and their errors."""

from __future__ import annotations

import hashlib
import logging
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models import ResNet, resnet18
from torchvision.models.resnet import BasicBlock

from tests.modeling.helpers import H, W, tiny_cfg
from vireid.modeling import PretrainedWeightsError, TwoStreamResNet, VIReIDModel
from vireid.modeling.backbone import load_pretrained_state


def _tiny(**kw: object) -> TwoStreamResNet:
    torch.manual_seed(0)
    return TwoStreamResNet("tiny", pretrained=False, **kw)  # type: ignore[arg-type]


def test_output_shape_and_last_stride() -> None:
    x, mod = torch.randn(4, 3, H, W), torch.tensor([0, 1, 0, 1])
    assert _tiny(last_stride=1)(x, mod).shape == (4, 512, H // 16, W // 16)
    assert _tiny(last_stride=2)(x, mod).shape == (4, 512, H // 32, W // 32)


def test_mixed_batch_routes_each_sample_through_its_stem_in_order() -> None:
    net = _tiny().eval()
    x = torch.randn(6, 3, H, W)
    mod = torch.tensor([1, 0, 0, 1, 1, 0])
    with torch.no_grad():
        net.stems[1][0].weight.mul_(-1.0)  # the stems start as copies; make them differ
        mixed = net(x, mod)
        alone = torch.cat([net(x[i : i + 1], mod[i : i + 1]) for i in range(6)])
        # the same batch with every sample sent through the visible stem differs
        all_visible = net(x, torch.zeros_like(mod))
    torch.testing.assert_close(mixed, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(mixed[mod == 1], all_visible[mod == 1], atol=1e-3)


def test_visible_output_does_not_depend_on_infrared_stem() -> None:
    net = _tiny().eval()
    x, mod = torch.randn(4, 3, H, W), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        before = net(x, mod)
        for p in net.stems[1].parameters():
            p.add_(torch.randn_like(p))
        after = net(x, mod)
    torch.testing.assert_close(after[mod == 0], before[mod == 0])
    assert not torch.allclose(after[mod == 1], before[mod == 1], atol=1e-3)


def test_visible_only_batch_gives_no_gradient_to_infrared_stem() -> None:
    net = _tiny()
    net(torch.randn(4, 3, H, W), torch.zeros(4, dtype=torch.long)).sum().backward()
    assert all(p.grad is None for p in net.stems[1].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.stems[0].parameters())


def test_unknown_modality_code_is_rejected() -> None:
    with pytest.raises(ValueError, match="modality codes"):
        _tiny()(torch.randn(2, 3, H, W), torch.tensor([0, 2]))


def test_tiny_has_no_pretrained_weights() -> None:
    with pytest.raises(PretrainedWeightsError, match=r"model\.pretrained"):
        VIReIDModel(tiny_cfg(pretrained=True), 4)


def test_missing_weights_file_says_how_to_supply_it(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError) as err:
        TwoStreamResNet("resnet18", pretrained=True, weights_path=str(tmp_path / "nope.pth"))
    msg = str(err.value)
    assert "model.weights_path" in msg and "nope.pth" in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg


def test_failed_download_raises_instead_of_training_from_scratch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsError) as err:
        TwoStreamResNet("resnet18", pretrained=True, model_dir=str(tmp_path / "hub"))
    msg = str(err.value)
    assert "model.weights_path" in msg and "resnet18-f37072fd.pth" in msg and "URLError" in msg


def test_weights_file_of_another_arch_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1]).state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match="not a torchvision resnet18 state dict"):
        TwoStreamResNet("resnet18", pretrained=True, weights_path=str(path))


def test_unloadable_weights_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="not a loadable"):
        TwoStreamResNet("resnet18", pretrained=True, weights_path=str(path))


def test_local_weights_file_fills_both_stems_and_shared_layers(tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-local.pth"
    torch.save(state, path)
    torch.manual_seed(2)  # a different init, so equality below comes from the file
    model = VIReIDModel(tiny_cfg(arch="resnet18", pretrained=True, weights_path=str(path)), 4)
    net = model.backbone
    for stem in net.stems:
        torch.testing.assert_close(stem[0].weight, state["conv1.weight"], rtol=0, atol=0)
        torch.testing.assert_close(stem[1].running_var, state["bn1.running_var"], rtol=0, atol=0)
    torch.testing.assert_close(net.layer3[1].conv2.weight, state["layer3.1.conv2.weight"], rtol=0, atol=0)
    # the stems are copies, not one shared module
    assert net.stems[0][0].weight.data_ptr() != net.stems[1][0].weight.data_ptr()


def test_release_table_carries_torchvision_hash_prefixes() -> None:
    from vireid.modeling.backbone import torchvision_releases

    assert torchvision_releases("resnet50") == {"0676ba61": "IMAGENET1K_V1", "11ad3fa6": "IMAGENET1K_V2"}
    assert torchvision_releases("resnet18") == {"f37072fd": "IMAGENET1K_V1"}


def test_local_weights_not_the_v1_release_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "resnet18-local.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with caplog.at_level(logging.INFO, logger="vireid.modeling.backbone"):
        load_pretrained_state("resnet18", weights_path=str(path))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert sha[:8] in msg and "none of torchvision's ImageNet releases" in msg
    assert "IMAGENET1K_V1" in msg and "f37072fd" in msg


def test_local_weights_release_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose hash matches a release is named: V1 is logged, V2 warned about."""
    from vireid.modeling import backbone

    path = tmp_path / "resnet18-local.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    releases = {"resnet18": {prefix: "IMAGENET1K_V1"}}
    monkeypatch.setattr(backbone, "torchvision_releases", lambda arch: releases[arch])
    with caplog.at_level(logging.INFO, logger="vireid.modeling.backbone"):
        load_pretrained_state("resnet18", weights_path=str(path))
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "IMAGENET1K_V1" in caplog.records[0].getMessage() and prefix in caplog.records[0].getMessage()

    caplog.clear()
    releases["resnet18"] = {"f37072fd": "IMAGENET1K_V1", prefix: "IMAGENET1K_V2"}
    with caplog.at_level(logging.INFO, logger="vireid.modeling.backbone"):
        load_pretrained_state("resnet18", weights_path=str(path))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "ResNet18_Weights.IMAGENET1K_V2, not ResNet18_Weights.IMAGENET1K_V1" in caplog.records[0].getMessage()


def test_torchvision_path_loads_weights_only_with_hash_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake(url: str, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        seen.update(kwargs, url=url)
        return resnet18(weights=None).state_dict()

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", fake)
    load_pretrained_state("resnet18", model_dir=str(tmp_path))
    assert seen["weights_only"] is True and seen["check_hash"] is True
    assert str(seen["url"]).endswith("resnet18-f37072fd.pth")
