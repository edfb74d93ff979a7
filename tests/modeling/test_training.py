"""A short CPU training loop on synthetic, class-structured images lowers the total loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.modeling.helpers import H, W, layout, make_task


def test_short_training_loop_lowers_the_loss() -> None:
    p, k, steps = 4, 2, 30
    gen = torch.Generator().manual_seed(0)
    # each identity: a smooth colour pattern; infrared sees its grey level with another gain
    protos = F.interpolate(torch.randn(p, 3, 8, 4, generator=gen), size=(H, W), mode="bilinear")
    grey = protos.mean(1, keepdim=True).expand(-1, 3, -1, -1) * 1.5
    labels, mods = layout(p, k)
    task = make_task(num_classes=p, model={"fusion": True, "memory": True})
    opt = torch.optim.SGD(task.model.param_groups(lr=0.01, backbone_lr=0.01), momentum=0.9)
    history = []
    for _ in range(steps):
        clean = torch.cat([protos[labels[: p * k]], grey[labels[p * k :]]])  # [2PK,3,H,W]
        images = clean + 0.5 * torch.randn(clean.shape, generator=gen)
        losses, state = task(images, labels, mods)
        total = sum(losses.values())
        assert isinstance(total, torch.Tensor) and torch.isfinite(total)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        task.after_step(state)
        history.append(total.item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.5 * first, history
