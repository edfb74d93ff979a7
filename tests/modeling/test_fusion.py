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
    """Two pairs with values worked out by hand (torch.std is the n-1 std; eps 1e-6 is below
    the 4 decimals kept here).

    Pair 0, identity 0: W^v[0] = [2, 0, 1, 1], W^r[0] = [0, 2, 1, 1].
      visible g^v = [3, 3, 5, 7]: s = (W^v - W^r) g^v = [6, -6, 0, 0], mean 0, std sqrt(72/3) = 4.8990,
        z = [1.2247, -1.2247, 0, 0], a^v = sigmoid(z) = [0.7729, 0.2271, 0.5, 0.5]
      infrared g^r = [1, 2, 4, 2]: s = (W^r - W^v) g^r = [-2, 4, 0, 0], mean 0.5,
        std sqrt((6.25 + 12.25 + 0.25 + 0.25) / 3) = 2.5166, z = [-0.9934, 1.3908, -0.1987, -0.1987],
        a^r = [0.2702, 0.8007, 0.4505, 0.4505]
      h = a^v g^v + a^r g^r = [2.3187 + 0.2702, 0.6813 + 1.6014, 2.5 + 1.8020, 3.5 + 0.9010]
        = [2.5889, 2.2827, 4.3020, 4.4010]
    Pair 1, identity 1: W^v[1] = W^r[1], so s = 0, z = 0 and every weight is 0.5:
      h = (g^v + g^r) / 2 = ([1, -2, 3, 0] + [3, 4, -1, 2]) / 2 = [2, 1, 1, 1]
    """
    w_v = torch.tensor([[2.0, 0.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    w_r = torch.tensor([[0.0, 2.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    g_v = torch.tensor([[3.0, 3.0, 5.0, 7.0], [1.0, -2.0, 3.0, 0.0]], requires_grad=True)
    g_r = torch.tensor([[1.0, 2.0, 4.0, 2.0], [3.0, 4.0, -1.0, 2.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    a_v = torch.tensor([[0.7729, 0.2271, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]])
    a_r = torch.tensor([[0.2702, 0.8007, 0.4505, 0.4505], [0.5, 0.5, 0.5, 0.5]])
    tol = {"rtol": 0, "atol": 1e-4}
    torch.testing.assert_close(self_owned_attention(g_v, y, w_v, w_r), a_v, **tol)
    torch.testing.assert_close(self_owned_attention(g_r, y, w_r, w_v), a_r, **tol)
    h = fuse_pairs(g_v, g_r, y, w_v, w_r)
    torch.testing.assert_close(h, torch.tensor([[2.5889, 2.2827, 4.3020, 4.4010], [2.0, 1.0, 1.0, 1.0]]),
                               **tol)
    h.sum().backward()
    # no gradient through the attention: d h / d g is exactly the attention
    torch.testing.assert_close(g_v.grad, a_v, **tol)
    torch.testing.assert_close(g_r.grad, a_r, **tol)
