"""Dual-classifier attention fusion (docs/method.md section 1), parameter-free."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def self_owned_attention(g: Tensor, labels: Tensor, w_own: Tensor, w_other: Tensor,
                         eps: float = 1e-6) -> Tensor:
    """Channel attention of samples ``g [N,d]`` with ``labels [N]`` under their own-modality
    classifier ``w_own [C,d]`` against the other modality's ``w_other [C,d]``.

    s = W^own[y] * g - W^other[y] * g; a = sigmoid((s - mean(s)) / (std(s) + eps)), per sample.
    Computed without gradient: the weights are constants of the fusion.
    """
    g = g.float()
    s = (w_own[labels].float() - w_other[labels].float()) * g  # [N,d] self-owned score
    z = (s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + eps)  # [N,d]
    return torch.sigmoid(z)  # [N,d] in (0,1)


def fuse_pairs(g_v: Tensor, g_r: Tensor, labels: Tensor, w_v: Tensor, w_r: Tensor) -> Tensor:
    """Fused feature h of the k-th visible / k-th infrared pair: ``a^v * g^v + a^r * g^r``.

    g_v, g_r [N,d] (pair k = row k, same identity ``labels [N]``); w_v, w_r [C,d] the
    modality classifiers. Gradient flows into g_v and g_r, not through the attention.
    """
    a_v = self_owned_attention(g_v, labels, w_v, w_r).to(g_v.dtype)  # [N,d]
    a_r = self_owned_attention(g_r, labels, w_r, w_v).to(g_r.dtype)  # [N,d]
    return a_v * g_v + a_r * g_r  # [N,d]
