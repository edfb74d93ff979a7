"""The training task: one batch in, named loss terms out; memory update after the step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vireid.config import LossConfig
from vireid.distributed import all_gather_rows, is_distributed
from vireid.modeling import losses as L
from vireid.modeling.fusion import fuse_pairs
from vireid.modeling.model import VIReIDModel


@dataclass
class TaskState:
    """What one step hands to :meth:`ReIDTask.after_step` (and to logging).

    ``features [B,d]``: detached BNNeck features g of the batch; ``labels [B]``; ``modalities [B]`` (needed by a per-modality memory);
    ``diagnostics``: detached 0-dim tensors logged per epoch: ``kdw_<teacher>``, the mean
    distillation weight per teacher (``fuse``, ``mem``; only when distilling), and
    ``conf_<who>``, the mean softmax probability of the true identity under the student's
    logits (``student``) and each teacher's (only samples the teacher covers).
    """

    features: Tensor
    labels: Tensor
    diagnostics: dict[str, Tensor]
    modalities: Tensor | None = None


def check_batch_layout(labels: Tensor, modalities: Tensor) -> int:
    """Check the sampler's ``[visible block, infrared block]`` layout; return the block size.

    The two halves must carry the same labels in the same order, modalities 0 then 1, so
    that ``(i, n + i)`` is the i-th visible/infrared pair.
    """
    b = labels.shape[0]
    if labels.ndim != 1 or modalities.shape != labels.shape or b < 2 or b % 2:
        raise ValueError(f"batch layout: expected labels and modalities [2n], got "
                         f"{tuple(labels.shape)} and {tuple(modalities.shape)}")
    n = b // 2
    ok = ((labels[:n] == labels[n:]).all() & (modalities[:n] == 0).all() & (modalities[n:] == 1).all())
    if labels.is_cuda:  # checked on the device: no host sync in the training step
        torch._assert_async(ok, "batch layout: expected [visible block, infrared block] with the "
                                "same label order in both blocks")
        return n
    if not bool(ok):
        raise ValueError(
            "batch layout: expected [visible block (P*K), infrared block (P*K)] with the same "
            "label order in both blocks (IdentityBalancedSampler's order); got labels "
            f"{labels.tolist()} and modalities {modalities.tolist()}")
    return n


class ReIDTask(nn.Module):
    """Computes the method's named loss terms for a sampler batch (docs/method.md sections 0-3).

    Terms: ``id`` (shared classifier on g), ``tri`` (triplet on f, unless ``loss.triplet``
    is none), ``dual`` and ``fuse`` (when ``model.fusion``), ``kd`` (when ``loss.distill``),
    ``infer`` (when ``loss.infer`` is not none), ``cc`` (when ``model.cross_consistency``). :meth:`total` weighs them with
    ``loss.weights``. The task holds no optimiser and no parameters of its own.

    The readings of docs/method.md ("Readings that carry features across modalities"):
    ``model.memory_views: other`` gives each sample the memory teacher of its identity's
    views of the other modality; ``model.dual_probe`` trains W^v, W^r on detached g;
    ``loss.infer`` adds the feature-level term; ``model.fusion_layer`` 2 or 3 makes h from the
    pair's mid-level maps (reading d); ``model.cross_consistency`` adds MPANet's ``cc`` (reading
    f; the EMA classifiers move in :meth:`after_step`); ``late_terms`` (set per epoch by the Trainer
    from ``loss.distill_start``) switches ``kd`` and ``infer`` on.
    """

    def __init__(self, model: VIReIDModel, loss_cfg: LossConfig, rows_per_rank: int | None = None) -> None:
        super().__init__()
        if loss_cfg.distill and model.dual_classifiers is None and model.memory is None:
            raise ValueError("loss.distill: needs a teacher: turn on model.fusion or model.memory")
        self.model, self.cfg = model, loss_cfg
        # the fixed per-rank batch (2*P*K) every rank writes to the memory when distributed;
        # None: the step's own batch size (the caller keeps it equal across ranks)
        self.rows_per_rank = rows_per_rank
        self.late_terms = True  # kd and infer computed (the Trainer turns them on at loss.distill_start)

    def forward(self, images: Tensor, labels: Tensor, modalities: Tensor) -> tuple[dict[str, Tensor], TaskState]:
        # images [B,3,H,W] in sampler layout, labels [B], modalities [B] -> named scalar losses
        cfg, model = self.cfg, self.model
        n = check_batch_layout(labels, modalities)
        mid_fusion = model.cfg.fusion_layer > 0  # reading d: h from the pair's mid-level maps
        out = model(images, modalities, split=n, fuse_mid=mid_fusion)  # layout checked: route stems by halves
        f, g = out["f"], out["g"]  # [B,d] each
        w = model.classifier.weight  # [C,d]
        logits = F.linear(g, w)  # [B,C]
        losses: dict[str, Tensor] = {"id": L.identity_loss(logits, labels, cfg.label_smoothing)}
        if cfg.triplet != "none":
            losses["tri"] = L.triplet_loss(cfg.triplet, f, labels, modalities, cfg.margin,
                                           cfg.triplet_pairs)
        teachers: list[tuple[Tensor, Tensor | None]] = []
        names: list[str] = []
        h: Tensor | None = None
        m_feat: Tensor | None = None
        m_has: Tensor | None = None
        if model.dual_classifiers is not None:
            w_v, w_r = model.dual_classifiers[0].weight, model.dual_classifiers[1].weight  # [C,d]
            g_v, g_r, y = g[:n], g[n:], labels[:n]  # [n,d], [n,d], [n]
            d_v, d_r = (g_v.detach(), g_r.detach()) if model.cfg.dual_probe else (g_v, g_r)
            logits_v, logits_r = F.linear(d_v, w_v), F.linear(d_r, w_r)  # [n,C] each
            losses["dual"] = L.dual_classifier_loss(logits_v, y, logits_r, y, cfg.label_smoothing)
            if model.dual_ema is not None:  # reading f: each modality's classifier toward the other's EMA copy
                ema = model.dual_ema.to(g.dtype)  # [2,C,d]
                other = torch.cat([F.linear(g_v.detach(), ema[1]), F.linear(g_r.detach(), ema[0])])  # [2n,C]
                losses["cc"] = L.cross_consistency_loss(torch.cat([logits_v, logits_r]), other)
            # h [n,d]: reading d's mid-level fusion, or section 1's attention fusion of g
            h = out["h"] if mid_fusion else fuse_pairs(g_v, g_r, y, w_v.detach(), w_r.detach())
            fused_logits = F.linear(h, w)  # [n,C]
            losses["fuse"] = L.fused_feature_loss(fused_logits, y, cfg.label_smoothing)
            teachers.append((fused_logits.detach().repeat(2, 1), None))  # pair k teaches k and n+k
            names.append("fuse")
        if model.memory is not None:
            m, has = model.memory.means()  # [R,d], [R]: R = C, or 2C rows (identity, modality)
            rows = labels if model.cfg.memory_views == "both" else 2 * labels + (1 - modalities)  # [B]
            m_feat, m_has = m[rows], has[rows]  # [B,d], [B]
            mem_logits = F.linear(m_feat.to(g.dtype), w.detach())  # [B,C]
            teachers.append((mem_logits, m_has))
            names.append("mem")
        diagnostics = {"conf_student": _true_class_confidence(logits, labels, None)}
        for name, (t_logits, present) in zip(names, teachers, strict=True):
            diagnostics[f"conf_{name}"] = _true_class_confidence(t_logits, labels, present)
        if cfg.distill and self.late_terms:
            losses["kd"], weights = L.distillation_loss(logits, teachers, labels, cfg.temperature,
                                                        cfg.dynamic)
            diagnostics.update({f"kdw_{k}": v.mean().detach() for k, v in zip(names, weights, strict=True)})
        if cfg.infer != "none" and self.late_terms:
            if cfg.infer == "memory":
                assert m_feat is not None and m_has is not None  # checked by Config
                losses["infer"] = L.inference_loss(g, m_feat, m_has)
            else:
                assert h is not None
                losses["infer"] = L.inference_loss(g, h.detach().repeat(2, 1), None)
        return losses, TaskState(g.detach(), labels.detach(), diagnostics, modalities.detach())

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """``sum_k loss.weights.k * losses[k]`` in float32 (0-dim)."""
        w = self.cfg.weights
        return torch.stack([getattr(w, k) * v.float() for k, v in losses.items()]).sum()

    @torch.no_grad()
    def after_step(self, state: TaskState) -> None:
        """Write the step's features into the memory (all ranks' features when distributed).

        The batch's ``[visible block, infrared block]`` is interleaved (v0, r0, v1, r1, ...)
        before the write, so that the last S views of an identity hold both modalities for
        every S >= 2 (docs/method.md section 2, "multi-view").
        """
        self.model.update_dual_ema()  # reading f (no-op otherwise)
        memory = self.model.memory
        if memory is None:
            return
        order = interleave_modalities(state.labels.shape[0], state.labels.device)  # [B]
        features, labels = state.features[order], state.labels[order]
        if self.model.cfg.memory_views == "other":  # row of the (identity, modality) ring
            if state.modalities is None:
                raise ValueError("memory_views 'other': the step's modalities are needed to write the memory")
            labels = 2 * labels + state.modalities[order]
        if is_distributed():  # every rank writes the same number of rows: one collective each, no sizes exchanged
            rows = labels.shape[0] if self.rows_per_rank is None else self.rows_per_rank
            features, labels = all_gather_rows(features.float(), rows), all_gather_rows(labels, rows)
        memory.write(features, labels)


def interleave_modalities(b: int, device: torch.device | None = None) -> Tensor:
    """Row order ``[0, n, 1, n+1, ...]`` of a ``[visible block, infrared block]`` batch of ``b = 2n``."""
    n = b // 2
    half = torch.arange(n, device=device)
    return torch.stack([half, half + n], 1).reshape(-1)  # [2n]


@torch.no_grad()
def _true_class_confidence(logits: Tensor, labels: Tensor, present: Tensor | None) -> Tensor:
    """Mean ``softmax(logits)[y]`` over the samples where ``present`` (all when None); 0-dim."""
    q = torch.softmax(logits.float(), 1).gather(1, labels[:, None]).squeeze(1)  # [N]
    if present is None:
        return q.mean()
    p = present.to(q.dtype)
    return (q * p).sum() / p.sum().clamp(min=1.0)
