"""Dual-classifier attention fusion: self-owned channels weigh more, common ones sit at 0.5."""

from __future__ import annotations

import torch

from vireid.modeling import fuse_pairs, self_owned_attention


def _classifiers(d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity 0: channel 0 matters only to W^v, channel 1 only to W^r, the rest to both."""
    w_v, w_r = torch.ones(2, d), torch.ones(2, d)
    w_v[0, 0], w_r[0, 0] = 5.0, 0.0
    w_v[0, 1], w_r[0, 1] = 0.0, 5.0
    return w_v, w_r


def test_self_owned_channel_gets_more_weight_common_channel_half() -> None:
    w_v, w_r = _classifiers()
    g = torch.ones(1, 16)
    y = torch.tensor([0])
    a_v = self_owned_attention(g, y, w_v, w_r)[0]
    a_r = self_owned_attention(g, y, w_r, w_v)[0]
    assert a_v[0] > 0.9 and a_v[1] < 0.1  # visible sample: its own channel up, the other's down
    assert a_r[1] > 0.9 and a_r[0] < 0.1  # and the mirror image for the infrared sample
    torch.testing.assert_close(a_v[2:], torch.full((14,), 0.5), rtol=0, atol=1e-3)
    torch.testing.assert_close(a_r[2:], torch.full((14,), 0.5), rtol=0, atol=1e-3)


def test_attention_is_per_sample_and_uses_its_label() -> None:
    w_v, w_r = _classifiers()
    g = torch.ones(2, 16)
    a = self_owned_attention(g, torch.tensor([0, 1]), w_v, w_r)
    assert a[0, 0] > 0.9
    # identity 1: both classifiers equal, s = 0 everywhere -> every channel at 0.5
    torch.testing.assert_close(a[1], torch.full((16,), 0.5))


def test_fused_feature_pairs_rows_and_attention_is_a_constant() -> None:
    w_v, w_r = _classifiers()
    g_v = torch.randn(3, 16, requires_grad=True)
    g_r = torch.randn(3, 16, requires_grad=True)
    y = torch.tensor([0, 1, 0])
    h = fuse_pairs(g_v, g_r, y, w_v, w_r)
    a_v = self_owned_attention(g_v, y, w_v, w_r)
    a_r = self_owned_attention(g_r, y, w_r, w_v)
    torch.testing.assert_close(h, a_v * g_v + a_r * g_r)
    h.sum().backward()
    # no gradient through the attention: d h / d g is exactly the attention
    torch.testing.assert_close(g_v.grad, a_v)
    torch.testing.assert_close(g_r.grad, a_r)
