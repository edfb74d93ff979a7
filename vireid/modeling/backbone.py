"""Two-stream ResNet: one stem per modality, shared residual stages (docs/method.md section 0)."""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import ResNet, ResNet18_Weights, ResNet50_Weights, resnet18, resnet50
from torchvision.models.resnet import BasicBlock

from vireid.io import sha256_file as file_sha256

ARCHS = ("resnet50", "resnet18", "tiny")
# AGW starts from the original ImageNet release (V1) of torchvision's ResNets.
_WEIGHTS = {"resnet50": ResNet50_Weights.IMAGENET1K_V1, "resnet18": ResNet18_Weights.IMAGENET1K_V1}
_ENUMS = {"resnet50": ResNet50_Weights, "resnet18": ResNet18_Weights}

log = logging.getLogger(__name__)


def _hash_prefix(url: str) -> str:
    """The SHA-256 prefix torchvision puts in a weights file name (``resnet50-0676ba61.pth``)."""
    return url.rsplit("/", 1)[-1].rsplit("-", 1)[-1].split(".", 1)[0]


def torchvision_releases(arch: str) -> dict[str, str]:
    """``{sha256 prefix: release name}`` of torchvision's ImageNet releases of ``arch``."""
    return {_hash_prefix(w.url): w.name for w in _ENUMS[arch]}


def identify_release(arch: str, path: Path) -> tuple[str, str | None]:
    """(SHA-256 of ``path``, the name of the torchvision release of ``arch`` it is, or None)."""
    sha = file_sha256(path)
    for prefix, name in torchvision_releases(arch).items():
        if sha.startswith(prefix):
            return sha, name
    return sha, None


def _report_release(arch: str, path: Path) -> None:
    """Log which torchvision release the local file is; warn when it is not the V1 AGW uses."""
    sha, release = identify_release(arch, path)
    expected = _WEIGHTS[arch]
    if release == expected.name:
        log.info("model.weights_path: %s is torchvision's %s.%s (sha256 %s...), the release AGW uses",
                 path, _ENUMS[arch].__name__, release, sha[:8])
        return
    what = (f"torchvision's {_ENUMS[arch].__name__}.{release}" if release
            else "none of torchvision's ImageNet releases")
    log.warning("model.weights_path: %s (sha256 %s...) is %s, not %s.%s (sha256 %s...) that the "
                "AGW recipe uses; results will not be comparable with AGW's", path, sha[:8], what,
                _ENUMS[arch].__name__, expected.name, _hash_prefix(expected.url))


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for and cannot be had; the message says how to supply them."""


def _plain_resnet(arch: str) -> ResNet:
    if arch == "resnet50":
        return resnet50(weights=None)
    if arch == "resnet18":
        return resnet18(weights=None)
    if arch == "tiny":
        return ResNet(BasicBlock, [1, 1, 1, 1])
    raise ValueError(f"model.arch: unknown architecture {arch!r} (known: {', '.join(ARCHS)})")


def _how_to_supply(arch: str) -> str:
    url = _WEIGHTS[arch].url
    name = url.rsplit("/", 1)[-1]
    return (f"download {url} on a machine with network access and either set model.weights_path "
            f"in params.yaml to that file, or place it as '{name}' in torchvision's checkpoint "
            f"directory (<TORCH_HOME>/hub/checkpoints/{name}); or set model.pretrained: false "
            f"to train from scratch on purpose")


def load_pretrained_state(arch: str, weights_path: str = "", model_dir: str | None = None) -> dict[str, Tensor]:
    """ImageNet state dict of torchvision's plain ``arch``, from ``weights_path`` or torchvision.

    ``model_dir`` is torchvision's checkpoint cache directory (None: torch hub's default).
    Raises :class:`PretrainedWeightsError` when the weights cannot be had or do not fit ``arch``.
    """
    if arch not in _WEIGHTS:
        raise PretrainedWeightsError(
            f"model.pretrained: arch {arch!r} has no pretrained weights; set model.pretrained: false "
            f"or pick one of {', '.join(_WEIGHTS)}")
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise PretrainedWeightsError(
                f"model.weights_path: {path} does not exist; {_how_to_supply(arch)}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling errors come in many types
            raise PretrainedWeightsError(
                f"model.weights_path: {path} is not a loadable torch state dict ({e}); "
                f"{_how_to_supply(arch)}") from e
        source = str(path)
    else:
        try:
            # weights_only: a file planted in the cache cannot run code; check_hash: a download
            # must match the SHA-256 prefix in torchvision's file name
            state = _WEIGHTS[arch].get_state_dict(progress=False, model_dir=model_dir,
                                                  weights_only=True, check_hash=True)
        except Exception as e:  # URLError, HTTPError, OSError, a truncated cache file, ...
            raise PretrainedWeightsError(
                f"model.pretrained: could not obtain torchvision's ImageNet weights for {arch} "
                f"({type(e).__name__}: {e}); {_how_to_supply(arch)}") from e
        source = _WEIGHTS[arch].url
    if not isinstance(state, dict):
        raise PretrainedWeightsError(
            f"model.weights_path: {source} holds a {type(state).__name__}, not a state dict; "
            f"{_how_to_supply(arch)}")
    # check that the file fits the architecture before anything is copied
    try:
        _plain_resnet(arch).load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PretrainedWeightsError(
            f"model.weights_path: {source} is not a torchvision {arch} state dict "
            f"({str(e).splitlines()[0]} ...); {_how_to_supply(arch)}") from e
    if weights_path:
        _report_release(arch, Path(weights_path))
    return state


def torchvision_file(arch: str, model_dir: str | None = None) -> Path:
    """Where torchvision keeps its ImageNet file of ``arch``: ``model_dir`` (None: torch hub's
    ``<TORCH_HOME>/hub/checkpoints``) / the release's file name."""
    folder = Path(model_dir) if model_dir else Path(torch.hub.get_dir()) / "checkpoints"
    return folder / _WEIGHTS[arch].url.rsplit("/", 1)[-1]


def pretrained_file(arch: str, weights_path: str = "", model_dir: str | None = None) -> Path:
    """The local file ``arch``'s ImageNet weights load from, checked as :func:`load_pretrained_state`
    checks it: ``weights_path``, else torchvision's cached file (downloaded first when it is
    not cached and the network allows). This is what the driver stages for its Ray workers.
    """
    load_pretrained_state(arch, weights_path, model_dir)
    return Path(weights_path) if weights_path else torchvision_file(arch, model_dir)


class NonLocalBlock(nn.Module):
    """Non-local attention (Wang et al. 2018), embedded Gaussian, as AGW places it.

    ``z = x + BN(W y)`` with ``y = softmax(theta(x)^T phi(x)) g(x)`` over the h*w positions;
    theta, phi, g are 1x1 convolutions to ``channels // reduction`` channels and the BN's
    weight and bias start at zero, so the block starts as the identity.
    """

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        inter = max(1, channels // reduction)
        self.inter = inter
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.W = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        # x [B,C,h,w] -> [B,C,h,w]
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # [B,hw,c']
        phi = self.phi(x).flatten(2)  # [B,c',hw]
        g = self.g(x).flatten(2).transpose(1, 2)  # [B,hw,c']
        attn = torch.softmax(theta @ phi, dim=-1)  # [B,hw,hw] embedded Gaussian
        y = (attn @ g).transpose(1, 2).reshape(b, self.inter, h, w)  # [B,c',h,w]
        return x + self.W(y)


# Non-local blocks per stage: block indices (0-based, within layer2 / layer3) after which a
# block is inserted. ResNet-50 follows AGW's non_layers=[0,2,3,0] (the last 2 bottlenecks of
# layer2, the last 3 of layer3); ResNet-18 (2 blocks per stage) and tiny (1) get one after
# the last block of layer2 and of layer3, the same depth positions at their scale.
NON_LOCAL_AFTER = {
    "resnet50": {"layer2": (2, 3), "layer3": (3, 4, 5)},
    "resnet18": {"layer2": (1,), "layer3": (1,)},
    "tiny": {"layer2": (0,), "layer3": (0,)},
}


def _with_non_local(layer: nn.Sequential, after: tuple[int, ...]) -> nn.Sequential:
    """``layer`` with a :class:`NonLocalBlock` named ``nl<i>`` after each block ``i`` in ``after``.

    The residual blocks keep their names (``0``, ``1``, ...), so ImageNet weights map as before.
    """
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for i, block in enumerate(layer):
        modules[str(i)] = block
        if i in after:
            channels = block.bn3.num_features if hasattr(block, "bn3") else block.bn2.num_features
            modules[f"nl{i}"] = NonLocalBlock(channels)
    return nn.Sequential(modules)


def _set_last_stride(layer4: nn.Sequential, stride: int) -> None:
    """Set the stride of layer4's first block (its strided conv and its downsample)."""
    block = layer4[0]
    for conv in (block.conv1, getattr(block, "conv2", None)):
        if conv is not None and conv.stride != (1, 1):
            conv.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


class TwoStreamResNet(nn.Module):
    """ResNet with modality-specific stems (index = modality code: 0 visible, 1 infrared)
    and shared ``layer1..layer4``.

    ``pretrained``: start from ImageNet weights (``weights_path`` if given, else torchvision's
    download into ``model_dir``); the same weights go into both stems and the shared layers.
    ``non_local``: insert AGW's non-local blocks (:data:`NON_LOCAL_AFTER`) into layer2/layer3.
    """

    def __init__(self, arch: str = "resnet50", pretrained: bool = True, weights_path: str = "",
                 last_stride: int = 1, model_dir: str | None = None, non_local: bool = False) -> None:
        super().__init__()
        base = _plain_resnet(arch)
        if pretrained:
            base.load_state_dict(load_pretrained_state(arch, weights_path, model_dir))
        stem = nn.Sequential(base.conv1, base.bn1, base.relu, base.maxpool)
        self.stems = nn.ModuleList([stem, copy.deepcopy(stem)])
        self.layer1, self.layer2, self.layer3, self.layer4 = base.layer1, base.layer2, base.layer3, base.layer4
        _set_last_stride(self.layer4, last_stride)
        if non_local:
            after = NON_LOCAL_AFTER[arch]
            self.layer2 = _with_non_local(self.layer2, after["layer2"])
            self.layer3 = _with_non_local(self.layer3, after["layer3"])
        self.out_channels: int = base.fc.in_features
        self.arch = arch

    def forward(self, x: Tensor, modality: Tensor, split: int | None = None) -> Tensor:
        # x [B,3,H,W], modality [B] long in {0,1} -> [B,C,H/(16 or 32),W/(16 or 32)]
        # split: the caller guarantees rows [:split] are visible and [split:] infrared (the
        # sampler's layout); routing then needs no data-dependent shapes and no device sync.
        if split is not None:
            return self.trunk(self.stem_split(x, split))
        parts: list[Tensor] = []
        index: list[Tensor] = []
        for code, stem in enumerate(self.stems):
            idx = torch.nonzero(modality == code).flatten()  # [B_m]
            if idx.numel() > 0:
                parts.append(stem(x.index_select(0, idx)))  # [B_m,64,H/4,W/4]
                index.append(idx)
        order = torch.cat(index)  # [B] batch positions in stem-output order
        if order.numel() != x.shape[0]:
            raise ValueError("modality codes must be 0 (visible) or 1 (infrared)")
        y = torch.cat(parts).index_select(0, torch.argsort(order))  # back to input order
        return self.trunk(y)  # [B,C,h,w]

    def stem_split(self, x: Tensor, split: int) -> Tensor:
        """The stems of a batch whose rows ``[:split]`` are visible and ``[split:]`` infrared."""
        # x [B,3,H,W] -> [B,64,H/4,W/4]
        return torch.cat([self.stems[0](x[:split]), self.stems[1](x[split:])])

    def trunk(self, y: Tensor) -> Tensor:
        """The shared layers, one static-shape region (what ``compile_for_speed`` compiles)."""
        # y [B,64,H/4,W/4] -> [B,C,h,w]
        return self.layer4(self.layer3(self.layer2(self.layer1(y))))

    def stages(self) -> tuple[nn.Module, ...]:
        """The shared layers in order: ``layer1..layer4``."""
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def trunk_with_mid(self, y: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """The shared layers as :meth:`trunk` (eager), also returning layer ``level``'s output."""
        # y [B,64,H/4,W/4] -> ([B,C,h,w], [B,C_level,h_level,w_level])
        mid = y
        for stage in self.stages()[:level]:
            mid = stage(mid)
        return self.trunk_from(mid, level), mid

    def trunk_from(self, mid: Tensor, level: int) -> Tensor:
        """The shared layers after layer ``level`` (``level`` in 1..4; 4: none)."""
        # mid [N,C_level,h_level,w_level] -> [N,C,h,w]
        for stage in self.stages()[level:]:
            mid = stage(mid)
        return mid
