"""Loss terms of METHOD.md sections 0, 1 and 3, as plain functions on tensors.

Cross-modality triplet, our reading: every sample is an anchor; its positives are the
samples of the same identity in the *other* modality and its negatives the samples of other
identities in the other modality. The loss is averaged over anchors of both modalities.
This is the variant of AGW's/HcTri's cross-modality metric learning that asks directly for
what VI-ReID is tested on (a visible query ranked against an infrared gallery, and back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def identity_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of ``logits [N,C]`` against ``labels [N]`` (optional label smoothing)."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def _cross_modality_masks(labels: Tensor, modalities: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Partner masks [N,N]: positives, negatives (both from the other modality), other modality."""
    same_id = labels[:, None] == labels[None, :]  # [N,N]
    other_mod = modalities[:, None] != modalities[None, :]  # [N,N]
    return same_id & other_mod, ~same_id & other_mod, other_mod


def _pairwise_dist(x: Tensor) -> Tensor:
    # x [N,d] -> Euclidean distances [N,N] (clamped before sqrt for a finite gradient)
    sq = x.pow(2).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.t()
    return d2.clamp(min=1e-12).sqrt()


def hard_triplet_loss(features: Tensor, labels: Tensor, modalities: Tensor, margin: float = 0.3) -> Tensor:
    """Cross-modality batch-hard triplet: mean over anchors of
    ``relu(max_p d(a,p) - min_n d(a,n) + margin)``, p / n from the other modality.

    features [N,d]; anchors without a cross-modality positive and negative are skipped.
    """
    dist = _pairwise_dist(features.float())  # [N,N]
    pos, neg, _ = _cross_modality_masks(labels, modalities)
    ok = pos.any(1) & neg.any(1)  # [N]
    if not bool(ok.any()):
        return dist.sum() * 0.0
    dist, pos, neg = dist[ok], pos[ok], neg[ok]  # [A,N] anchors with both partners
    hardest_pos = dist.masked_fill(~pos, float("-inf")).amax(1)  # [A]
    hardest_neg = dist.masked_fill(~neg, float("inf")).amin(1)  # [A]
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def weighted_regularised_triplet_loss(features: Tensor, labels: Tensor, modalities: Tensor) -> Tensor:
    """AGW's weighted-regularisation triplet, cross-modality: softmax(d)-weighted positives,
    softmax(-d)-weighted negatives, soft margin ``log(1 + exp(d_p - d_n))``; mean over anchors.
    """
    dist = _pairwise_dist(features.float())  # [N,N]
    pos, neg, _ = _cross_modality_masks(labels, modalities)
    ok = pos.any(1) & neg.any(1)  # [N]
    if not bool(ok.any()):
        return dist.sum() * 0.0
    dist, pos, neg = dist[ok], pos[ok], neg[ok]  # [A,N] anchors with both partners
    w_pos = torch.softmax(dist.masked_fill(~pos, float("-inf")), dim=1)  # [A,N]
    w_neg = torch.softmax((-dist).masked_fill(~neg, float("-inf")), dim=1)  # [A,N]
    d_pos = (w_pos * dist).sum(1)  # [A]
    d_neg = (w_neg * dist).sum(1)  # [A]
    return F.softplus(d_pos - d_neg).mean()


def triplet_loss(kind: str, features: Tensor, labels: Tensor, modalities: Tensor, margin: float) -> Tensor:
    """Dispatch on ``loss.triplet`` ("hard" or "wrt")."""
    if kind == "hard":
        return hard_triplet_loss(features, labels, modalities, margin)
    if kind == "wrt":
        return weighted_regularised_triplet_loss(features, labels, modalities)
    raise ValueError(f"loss.triplet: unknown variant {kind!r} (hard, wrt)")


def dual_classifier_loss(logits_v: Tensor, labels_v: Tensor, logits_r: Tensor, labels_r: Tensor,
                         label_smoothing: float = 0.0) -> Tensor:
    """``CE(W^v g^v, y) + CE(W^r g^r, y)``: each modality classifier sees only its modality."""
    return (identity_loss(logits_v, labels_v, label_smoothing)
            + identity_loss(logits_r, labels_r, label_smoothing))


def fused_feature_loss(fused_logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``CE(W h, y)`` of the fused pair features under the shared classifier."""
    return identity_loss(fused_logits, labels, label_smoothing)


@torch.no_grad()
def dynamic_weight(teacher_logits: Tensor, student_logits: Tensor, labels: Tensor) -> Tensor:
    """``max(0, q_t(y) - q_s(y))`` with q = softmax at T = 1: ``[N]``, no gradient."""
    q_t = torch.softmax(teacher_logits.float(), 1).gather(1, labels[:, None]).squeeze(1)
    q_s = torch.softmax(student_logits.float(), 1).gather(1, labels[:, None]).squeeze(1)
    return (q_t - q_s).clamp(min=0.0)


def distillation_loss(student_logits: Tensor, teachers: list[tuple[Tensor, Tensor | None]],
                      labels: Tensor, temperature: float, dynamic: bool = True) -> tuple[Tensor, list[Tensor]]:
    """Self-distillation, METHOD.md section 3.

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
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)  # [N] KL(p_t || p_s)
        if dynamic:
            w = dynamic_weight(teacher_logits, student_logits, labels)  # [N]
        else:
            w = torch.ones_like(kl)
        if present is not None:
            w = w * present.to(w.dtype)
        weights.append(w)
        total = total + (w * (t * t) * kl).sum()
    return total / student_logits.shape[0], weights
