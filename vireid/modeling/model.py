"""The VI-ReID network: two-stream ResNet, GeM, BNNeck, classifiers and the memory."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vireid.config import ModelConfig
from vireid.modeling.backbone import TwoStreamResNet
from vireid.modeling.memory import MultiViewMemory


class GeM(nn.Module):
    """Generalised-mean pooling with a fixed exponent p (p=1: average, p->inf: max)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.eps = float(p), eps

    def forward(self, x: Tensor) -> Tensor:
        # x [B,C,h,w] -> [B,C]
        x = x.float().clamp(min=self.eps).pow(self.p)  # float32: x^3 overflows half precision
        return x.mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d whose bias is frozen at zero (BoT/AGW neck)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.bias.requires_grad_(False)


class VIReIDModel(nn.Module):
    """Backbone + GeM + BNNeck, the shared classifier W and, when switched on, the modality
    classifiers ``dual_classifiers = [W^v, W^r]`` (index = modality code) and the memory.

    ``model_dir``: torchvision's checkpoint directory for the ImageNet download (None: torch
    hub's default); only used when ``cfg.pretrained`` and ``cfg.weights_path`` is empty.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, model_dir: str | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.cfg, self.num_classes = cfg, num_classes
        self.backbone = TwoStreamResNet(cfg.arch, cfg.pretrained, cfg.weights_path, cfg.last_stride,
                                        model_dir, cfg.non_local)
        self.feat_dim: int = self.backbone.out_channels
        self.pool = GeM(cfg.gem_p)
        self.bnneck = BNNeck(self.feat_dim)
        self.classifier = _classifier(self.feat_dim, num_classes)
        self.dual_classifiers: nn.ModuleList | None = None
        if cfg.fusion:
            self.dual_classifiers = nn.ModuleList(
                [_classifier(self.feat_dim, num_classes) for _ in range(2)])
        self.memory: MultiViewMemory | None = None
        if cfg.memory:  # memory_views "other": one ring per (identity, modality), row 2 * label + modality
            rows = num_classes * (2 if cfg.memory_views == "other" else 1)
            self.memory = MultiViewMemory(rows, cfg.memory_size, self.feat_dim)
        ema = None  # reading f: EMA copies of [W^v, W^r] [2,C,d], index = modality code
        if cfg.cross_consistency:
            assert self.dual_classifiers is not None  # checked by ModelConfig
            ema = torch.stack([c.weight.detach().clone() for c in self.dual_classifiers])
        self.dual_ema: Tensor | None
        self.register_buffer("dual_ema", ema)

    def forward(self, x: Tensor, modality: Tensor, split: int | None = None,
                fuse_mid: bool = False) -> dict[str, Tensor]:
        # x [B,3,H,W], modality [B] -> f [B,d] pooled (triplet), g [B,d] BNNeck (classifiers)
        # split: rows [:split] visible, [split:] infrared (see TwoStreamResNet.forward)
        # fuse_mid (reading d; needs the sampler's layout, split = B/2): also h [B/2,d], pair k's
        # layer-L maps (L = model.fusion_layer) averaged and passed through the remaining shared
        # layers, GeM and BNNeck
        if not fuse_mid:
            f = self.pool(self.backbone(x, modality, split))  # [B,d] float32
            return {"f": f, "g": self.bnneck(f)}
        level = self.cfg.fusion_layer
        if level == 0 or split is None or 2 * split != x.shape[0]:
            raise ValueError(f"fuse_mid: needs model.fusion_layer 2 or 3 (got {level}) and a "
                             f"[visible block, infrared block] batch (split {split} of {x.shape[0]})")
        bb = self.backbone
        maps, mid = bb.trunk_with_mid(bb.stem_split(x, split), level)  # [B,C,h,w], [B,C_L,h_L,w_L]
        mixed = 0.5 * (mid[:split] + mid[split:])  # [n,C_L,h_L,w_L]: pair k = rows k and n + k
        f = self.pool(maps)  # [B,d]
        h = self.bnneck(self.pool(bb.trunk_from(mixed, level)))  # [n,d]
        return {"f": f, "g": self.bnneck(f), "h": h}

    @torch.no_grad()
    def update_dual_ema(self) -> None:
        """Reading f: ``W_ema <- (1 - r) W_ema + r W`` for W^v and W^r (r = ``model.cc_update``)."""
        if self.dual_ema is None or self.dual_classifiers is None:
            return
        for m, c in enumerate(self.dual_classifiers):
            self.dual_ema[m].lerp_(c.weight.detach().to(self.dual_ema.dtype), self.cfg.cc_update)

    @torch.no_grad()
    def embed(self, x: Tensor, modality: Tensor) -> Tensor:
        """Inference embedding: L2-normalised g ``[B,d]`` (no fusion, no memory)."""
        return F.normalize(self(x, modality)["g"], dim=1)

    def param_groups(self, lr: float, backbone_lr: float) -> list[dict[str, Any]]:
        """Optimiser groups: ``backbone_lr`` for the (pretrained) backbone, ``lr`` for the rest."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": backbone, "lr": backbone_lr, "name": "backbone"},
                {"params": head, "lr": lr, "name": "head"}]


def _classifier(dim: int, num_classes: int) -> nn.Linear:
    """C x d linear classifier without bias, AGW's init (normal, std 0.001)."""
    fc = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(fc.weight, std=0.001)
    return fc
