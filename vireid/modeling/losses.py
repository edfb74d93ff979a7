"""Loss terms of docs/method.md sections 0, 1 and 3, as plain functions on tensors.

Every term is a per-sample mean over the samples it covers. Triplet distances are computed
in float32 with autocast off: under bf16 autocast ``x @ x.t()`` at GeM-output norms is off
by more than the margin.

Triplet mining (``pairs``): ``"all"`` (AGW's training, the default) takes every sample of
the batch as an anchor, positives of the same identity and negatives of other identities
from both modalities; ``"cross_modality"`` takes partners from the other modality only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TRIPLET_PAIRS = ("all", "cross_modality")


def identity_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of ``logits [N,C]`` against ``labels [N]`` (optional label smoothing)."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def _partner_masks(labels: Tensor, modalities: Tensor, pairs: str) -> tuple[Tensor, Tensor]:
    """Positive and negative partner masks ``[N,N]`` of every anchor.

    ``"all"`` counts the anchor among its own positives, as AGW's ``TripletLoss_WRT`` does
    (distance 0: no effect on the hardest positive; in the soft weighting it takes its share).
    """
    if pairs not in TRIPLET_PAIRS:
        raise ValueError(f"loss.triplet_pairs: unknown mining {pairs!r} ({', '.join(TRIPLET_PAIRS)})")
    same_id = labels[:, None] == labels[None, :]  # [N,N]
    if pairs == "cross_modality":
        other_mod = modalities[:, None] != modalities[None, :]  # [N,N]
        return same_id & other_mod, ~same_id & other_mod
    return same_id, ~same_id


def pairwise_distances(x: Tensor) -> Tensor:
    """Euclidean distances ``[N,N]`` of ``x [N,d]`` in float32 (autocast off), clamped
    before the square root for a finite gradient."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        sq = x.pow(2).sum(1)  # [N]
        d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())  # [N,N]
        return d2.clamp(min=1e-12).sqrt()


def _anchor_masks(labels: Tensor, modalities: Tensor, pairs: str) -> tuple[Tensor, Tensor, Tensor]:
    """Partner masks ``pos, neg [N,N]`` and ``ok [N]``: anchors with a positive and a negative.

    The rows of anchors without both partners are opened to every sample, so that their
    (discarded, see :func:`_mean_over`) values stay finite: no NaN reaches the gradient, and
    no data-dependent selection syncs the device with the host.
    """
    pos, neg = _partner_masks(labels, modalities, pairs)
    ok = pos.any(1) & neg.any(1)  # [N]
    return pos | ~ok[:, None], neg | ~ok[:, None], ok


def _mean_over(values: Tensor, ok: Tensor) -> Tensor:
    """Mean of ``values [N]`` over the anchors ``ok [N]`` (0 with gradient 0 when there is none)."""
    w = ok.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1.0)


def hard_triplet_loss(features: Tensor, labels: Tensor, modalities: Tensor, margin: float = 0.3,
                      pairs: str = "all") -> Tensor:
    """Batch-hard triplet: mean over anchors of ``relu(max_p d(a,p) - min_n d(a,n) + margin)``.

    features [N,d]; anchors without a positive and a negative partner are skipped.
    """
    dist = pairwise_distances(features)  # [N,N]
    pos, neg, ok = _anchor_masks(labels, modalities, pairs)
    hardest_pos = dist.masked_fill(~pos, float("-inf")).amax(1)  # [N]
    hardest_neg = dist.masked_fill(~neg, float("inf")).amin(1)  # [N]
    return _mean_over(F.relu(hardest_pos - hardest_neg + margin), ok)


def weighted_regularised_triplet_loss(features: Tensor, labels: Tensor, modalities: Tensor,
                                      pairs: str = "all") -> Tensor:
    """AGW's weighted-regularisation triplet: softmax(d)-weighted positives, softmax(-d)-weighted
    negatives, soft margin ``log(1 + exp(d_p - d_n))``; mean over anchors.

    With ``pairs="all"`` this is AGW's ``TripletLoss_WRT`` on the whole batch.
    """
    dist = pairwise_distances(features)  # [N,N]
    pos, neg, ok = _anchor_masks(labels, modalities, pairs)
    w_pos = torch.softmax(dist.masked_fill(~pos, float("-inf")), dim=1)  # [N,N]
    w_neg = torch.softmax((-dist).masked_fill(~neg, float("-inf")), dim=1)  # [N,N]
    d_pos = (w_pos * dist).sum(1)  # [N]
    d_neg = (w_neg * dist).sum(1)  # [N]
    return _mean_over(F.softplus(d_pos - d_neg), ok)


def triplet_loss(kind: str, features: Tensor, labels: Tensor, modalities: Tensor, margin: float,
                 pairs: str = "all") -> Tensor:
    """Dispatch on ``loss.triplet`` ("hard" or "wrt") with ``loss.triplet_pairs`` mining."""
    if kind == "hard":
        return hard_triplet_loss(features, labels, modalities, margin, pairs)
    if kind == "wrt":
        return weighted_regularised_triplet_loss(features, labels, modalities, pairs)
    raise ValueError(f"loss.triplet: unknown variant {kind!r} (hard, wrt)")


def dual_classifier_loss(logits_v: Tensor, labels_v: Tensor, logits_r: Tensor, labels_r: Tensor,
                         label_smoothing: float = 0.0) -> Tensor:
    """Mean over all 2n samples of ``CE(W^m g^m, y)``: each modality classifier sees only its
    modality (``logits_v [n,C]``, ``logits_r [n',C]``)."""
    n_v, n_r = logits_v.shape[0], logits_r.shape[0]
    ce_v = identity_loss(logits_v, labels_v, label_smoothing)
    ce_r = identity_loss(logits_r, labels_r, label_smoothing)
    return (n_v * ce_v + n_r * ce_r) / (n_v + n_r)


def fused_feature_loss(fused_logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``CE(W h, y)`` of the fused pair features under the shared classifier."""
    return identity_loss(fused_logits, labels, label_smoothing)


@torch.no_grad()
def dynamic_weight(teacher_logits: Tensor, student_logits: Tensor, labels: Tensor) -> Tensor:
    """``max(0, q_t(y) - q_s(y))`` with q = softmax at T = 1: ``[N]``, no gradient."""
    q_t = torch.softmax(teacher_logits.float(), 1).gather(1, labels[:, None]).squeeze(1)
    q_s = torch.softmax(student_logits.float(), 1).gather(1, labels[:, None]).squeeze(1)
    return (q_t - q_s).clamp(min=0.0)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row ``KL(p || q) = sum_c p_c (log p_c - log q_c)`` from log-probabilities [N,C] -> [N];
    the caller detaches the side that gets no gradient."""
    return (log_p.exp() * (log_p - log_q)).sum(1)


def distillation_loss(student_logits: Tensor, teachers: list[tuple[Tensor, Tensor | None]],
                      labels: Tensor, temperature: float, dynamic: bool = True) -> tuple[Tensor, list[Tensor]]:
    """Self-distillation, docs/method.md section 3.

    student_logits [N,C]; teachers: (logits [N,C], present [N] bool or None for all),
    detached here; L = mean_i sum_t w_{t,i} T^2 KL(p_t || p_s), a teacher absent for sample
    i contributes nothing to it (the mean still runs over all N). w is the dynamic weight
    (``dynamic``) or 1. Returns the loss and the per-teacher weights ``[N]`` (0 where absent).
    """
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)  # [N,C]
    total = student_logits.new_zeros((), dtype=torch.float32)
    weights: list[Tensor] = []
    for teacher_logits, present in teachers:
        teacher_logits = teacher_logits.detach().float()
        log_p_t = F.log_softmax(teacher_logits / t, dim=1)  # [N,C]
        kl = _kl(log_p_t, log_p_s)  # [N] KL(p_t || p_s)
        if dynamic:
            w = dynamic_weight(teacher_logits, student_logits, labels)  # [N]
        else:
            w = torch.ones_like(kl)
        if present is not None:
            w = w * present.to(w.dtype)
        weights.append(w)
        total = total + (w * (t * t) * kl).sum()
    return total / student_logits.shape[0], weights


def inference_loss(g: Tensor, target: Tensor, present: Tensor | None) -> Tensor:
    """Feature-level inference (docs/method.md, reading b): ``mean_i ||n(g_i) - n(t_i)||^2``
    with ``n`` the L2 normalisation and ``t`` detached here (the other modality's multi-view
    feature or the fused pair feature); ``present [N]`` masks samples without a target (the
    mean still runs over all N). Equals ``2 - 2 cos(g_i, t_i)`` per sample: in [0, 4].

    g [N,d], target [N,d] -> 0-dim float32.
    """
    d = (F.normalize(g.float(), dim=1) - F.normalize(target.detach().float(), dim=1)).pow(2).sum(1)  # [N]
    if present is not None:
        d = d * present.to(d.dtype)
    return d.mean()


def cross_consistency_loss(own_logits: Tensor, other_ema_logits: Tensor) -> Tensor:
    """MPANet's modality consistency (docs/method.md, reading f): ``mean_i KL(p_i || q_i)`` with
    ``p = softmax(own_logits)`` (sample i under its own modality's classifier; the gradient
    flows here) and ``q = softmax(other_ema_logits)`` (under the other modality's EMA
    classifier, detached here), T = 1, as ``nn.KLDivLoss(reduction="batchmean")(log q, p)``.

    own_logits [N,C], other_ema_logits [N,C] -> 0-dim float32.
    """
    log_p = F.log_softmax(own_logits.float(), dim=1)  # [N,C]
    log_q = F.log_softmax(other_ema_logits.detach().float(), dim=1)  # [N,C]
    return _kl(log_p, log_q).mean()
