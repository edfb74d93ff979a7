"""Loss terms: cross-modality triplets, identity CE, distillation with the dynamic weight."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vireid.modeling.losses import (
    distillation_loss,
    dynamic_weight,
    hard_triplet_loss,
    identity_loss,
    triplet_loss,
    weighted_regularised_triplet_loss,
)

# 1-D features: visible [id0: 0, id1: 10], infrared [id0: 1, id1: 4]
FEATS = torch.tensor([[0.0], [10.0], [1.0], [4.0]])
LABELS = torch.tensor([0, 1, 0, 1])
MODS = torch.tensor([0, 0, 1, 1])


def test_hard_triplet_uses_the_other_modality_only() -> None:
    # anchors: v0: pos 1, neg 4 -> 0 ; v1: pos 6, neg 9 -> 0 ; r0: pos 1, neg 9 -> 0 ;
    #          r1: pos 6, neg 4 -> 6 - 4 + 0.3 = 2.3
    loss = hard_triplet_loss(FEATS, LABELS, MODS, margin=0.3, pairs="cross_modality")
    assert loss.item() == pytest.approx(2.3 / 4, abs=1e-5)
    # add a visible id1 sample at 0.5, right next to the visible anchor v0 (distance 0.5):
    # as a same-modality negative it must not count for v0 (it would add 1 - 0.5 + 0.3)
    feats = torch.cat([FEATS, torch.tensor([[0.5]])])
    labels, mods = torch.cat([LABELS, torch.tensor([1])]), torch.cat([MODS, torch.tensor([0])])
    loss = hard_triplet_loss(feats, labels, mods, margin=0.3, pairs="cross_modality")
    # v0: 0 ; v1: 0 ; r0: pos 1, neg min(9, 0.5) -> 0.8 ; r1: pos max(6, 3.5), neg 4 -> 2.3 ;
    # new v1 at 0.5: pos 3.5 (r1), neg 0.5 (r0) -> 3.3
    assert loss.item() == pytest.approx((0.8 + 2.3 + 3.3) / 5, abs=1e-5)


def test_wrt_triplet_matches_hand_computation() -> None:
    feats = torch.tensor([[0.0], [10.0], [1.0], [4.0], [2.0]])
    labels = torch.tensor([0, 1, 0, 1, 0])
    mods = torch.tensor([0, 0, 1, 1, 1])
    d = (feats - feats.t()).abs()
    expected = []
    for a in range(5):
        pos = [j for j in range(5) if labels[j] == labels[a] and mods[j] != mods[a]]
        neg = [j for j in range(5) if labels[j] != labels[a] and mods[j] != mods[a]]
        dp, dn = d[a, pos], d[a, neg]
        wp, wn = torch.softmax(dp, 0), torch.softmax(-dn, 0)
        expected.append(math.log1p(math.exp((wp * dp).sum() - (wn * dn).sum())))
    got = weighted_regularised_triplet_loss(feats, labels, mods, pairs="cross_modality")
    assert got.item() == pytest.approx(sum(expected) / 5, abs=1e-5)
    assert triplet_loss("wrt", feats, labels, mods, 0.3, "cross_modality").item() == pytest.approx(got.item())


def _agw_triplet_wrt(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AGW's TripletLoss_WRT (mangye16/Cross-Modal-Re-ID-baseline, loss.py), transcribed."""
    def softmax_weights(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        max_v = torch.max(dist * mask, dim=1, keepdim=True)[0]
        diff = dist - max_v
        z = torch.sum(torch.exp(diff) * mask, dim=1, keepdim=True) + 1e-6
        return torch.exp(diff) * mask / z

    n = inputs.size(0)
    sq = inputs.pow(2).sum(1, keepdim=True).expand(n, n)
    dist_mat = (sq + sq.t() - 2 * inputs @ inputs.t()).clamp(min=1e-12).sqrt()
    is_pos = targets.expand(n, n).eq(targets.expand(n, n).t()).float()
    is_neg = targets.expand(n, n).ne(targets.expand(n, n).t()).float()
    dist_ap, dist_an = dist_mat * is_pos, dist_mat * is_neg
    furthest_positive = torch.sum(dist_ap * softmax_weights(dist_ap, is_pos), dim=1)
    closest_negative = torch.sum(dist_an * softmax_weights(-dist_an, is_neg), dim=1)
    y = torch.ones_like(furthest_positive)
    return torch.nn.SoftMarginLoss()(closest_negative - furthest_positive, y)


def test_wrt_over_the_whole_batch_is_agw_triplet_wrt() -> None:
    gen = torch.Generator().manual_seed(3)
    # distances ~2: AGW's softmax_weights takes the max over the *masked* matrix (0 for the
    # negatives), so its negative weights underflow against its +1e-6 once distances pass
    # ~14; at small distances the two agree (docs/method.md, "Deviations")
    feats = torch.randn(16, 32, generator=gen) * 0.25
    labels = torch.arange(4).repeat_interleave(2).repeat(2)  # sampler layout, P=4, K=2
    mods = torch.cat([torch.zeros(8), torch.ones(8)]).long()
    got = weighted_regularised_triplet_loss(feats, labels, mods, pairs="all")
    assert got.item() == pytest.approx(_agw_triplet_wrt(feats, labels).item(), rel=1e-4)
    assert triplet_loss("wrt", feats, labels, mods, 0.3).item() == pytest.approx(got.item())  # the default
    # whole-batch mining differs from cross-modality mining on the same batch
    assert abs(got.item() - weighted_regularised_triplet_loss(feats, labels, mods, "cross_modality").item()) > 1e-3


def test_whole_batch_hard_triplet_mines_same_modality_partners() -> None:
    # v0 at 0 has a same-modality negative (v1') at 0.5: whole-batch mining counts it
    feats = torch.cat([FEATS, torch.tensor([[0.5]])])
    labels, mods = torch.cat([LABELS, torch.tensor([1])]), torch.cat([MODS, torch.tensor([0])])
    d = (feats - feats.t()).abs()
    same = labels[:, None] == labels[None, :]
    expected = torch.relu(d.masked_fill(~same, -1).amax(1) - d.masked_fill(same, 1e9).amin(1) + 0.3).mean()
    assert hard_triplet_loss(feats, labels, mods, 0.3, "all").item() == pytest.approx(expected.item(), abs=1e-5)


def test_triplet_distances_are_float32_under_bf16_autocast() -> None:
    # GeM-output norms (~30): bf16 matmul errors of 2-3 dwarf the 0.3 margin
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(32, 512, generator=gen).abs() * 1.5
    labels = torch.arange(8).repeat_interleave(2).repeat(2)
    mods = torch.cat([torch.zeros(16), torch.ones(16)]).long()
    for kind in ("hard", "wrt"):
        ref = triplet_loss(kind, feats, labels, mods, 0.3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = triplet_loss(kind, feats, labels, mods, 0.3)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(ref.item(), abs=1e-4), kind
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = feats.float()
        sq = x.pow(2).sum(1)
        naive = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp(min=1e-12).sqrt()
    exact = torch.cdist(feats.double(), feats.double()).float()
    assert (naive.float() - exact).abs().max() > 0.3  # what the float32 path avoids


def test_triplets_skip_anchors_without_cross_modality_partners_and_stay_finite() -> None:
    feats = torch.randn(4, 8, requires_grad=True)
    mods = torch.zeros(4, dtype=torch.long)  # one modality only: no anchor has a partner
    for kind in ("hard", "wrt"):
        loss = triplet_loss(kind, feats, torch.tensor([0, 0, 1, 1]), mods, 0.3, "cross_modality")
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(feats.grad).all()
    with pytest.raises(ValueError, match="loss.triplet"):
        triplet_loss("soft", feats, torch.tensor([0, 0, 1, 1]), mods, 0.3)
    with pytest.raises(ValueError, match="loss.triplet_pairs"):
        triplet_loss("wrt", feats, torch.tensor([0, 0, 1, 1]), mods, 0.3, "same_modality")


def test_identity_loss_label_smoothing() -> None:
    logits, y = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([0])
    plain = identity_loss(logits, y)
    assert plain.item() == pytest.approx(F.cross_entropy(logits, y).item())
    assert identity_loss(logits, y, 0.1).item() > plain.item()


def _logits(conf: float, n: int = 5) -> torch.Tensor:
    """Logits whose softmax gives class 0 probability ``conf`` (rest uniform)."""
    rest = (1 - conf) / (n - 1)
    return torch.log(torch.tensor([[conf] + [rest] * (n - 1)]))


def test_dynamic_weight_zero_when_student_already_more_confident() -> None:
    y = torch.tensor([0])
    assert dynamic_weight(_logits(0.5), _logits(0.9), y).item() == 0.0
    student = _logits(0.3).requires_grad_()
    loss, (w,) = distillation_loss(student, [(_logits(0.2), None)], y, temperature=4.0)
    assert w.item() == 0.0 and loss.item() == 0.0


def test_dynamic_weight_grows_with_the_gap() -> None:
    y = torch.tensor([0])
    gaps = [dynamic_weight(_logits(c), _logits(0.3), y).item() for c in (0.4, 0.6, 0.9)]
    assert gaps == pytest.approx([0.1, 0.3, 0.6], abs=1e-5)
    assert gaps[0] < gaps[1] < gaps[2]


def test_distillation_matches_formula_and_gives_no_gradient_to_the_teacher() -> None:
    torch.manual_seed(0)
    student = torch.randn(6, 5, requires_grad=True)
    t1 = torch.randn(6, 5, requires_grad=True)
    t2 = torch.randn(6, 5, requires_grad=True)
    present = torch.tensor([True, False, True, True, False, True])
    y = torch.randint(0, 5, (6,))
    temp = 3.0
    loss, (w1, w2) = distillation_loss(student, [(t1, None), (t2, present)], y, temp, dynamic=True)
    log_s = F.log_softmax(student / temp, 1)

    def kl(t: torch.Tensor) -> torch.Tensor:  # [N] KL(p_t || p_s)
        return F.kl_div(log_s, F.log_softmax(t / temp, 1), reduction="none", log_target=True).sum(1)

    q = lambda z: torch.softmax(z, 1)[torch.arange(6), y]  # noqa: E731
    ew1 = (q(t1) - q(student)).clamp(min=0).detach()
    ew2 = (q(t2) - q(student)).clamp(min=0).detach() * present
    expected = (temp**2 * (ew1 * kl(t1) + ew2 * kl(t2))).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(w1, ew1)
    assert torch.equal(w2[~present], torch.zeros(2))  # an absent teacher gives no guidance
    loss.backward()
    assert t1.grad is None and t2.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_static_distillation_uses_weight_one() -> None:
    torch.manual_seed(1)
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    y = torch.randint(0, 5, (4,))
    loss, (w,) = distillation_loss(student, [(teacher, None)], y, 2.0, dynamic=False)
    kl = F.kl_div(F.log_softmax(student / 2, 1), F.softmax(teacher / 2, 1), reduction="batchmean")
    assert torch.equal(w, torch.ones(4))
    assert loss.item() == pytest.approx(4.0 * kl.item(), rel=1e-5)
