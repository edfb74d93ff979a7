"""AGW fidelity and the method's bookkeeping: non-local blocks, a memory that holds both
modalities, per-sample means, loss weights and the per-step diagnostics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.modeling.helpers import batch, layout, make_task
from vireid.config import ConfigError, LossConfig, LossWeights
from vireid.modeling.backbone import NON_LOCAL_AFTER, NonLocalBlock, TwoStreamResNet
from vireid.modeling.losses import dual_classifier_loss
from vireid.modeling.memory import MultiViewMemory
from vireid.modeling.task import TaskState, interleave_modalities

# -- non-local blocks ------------------------------------------------------------------


def _non_local_names(net: TwoStreamResNet) -> dict[str, list[str]]:
    return {layer: [n for n, m in getattr(net, layer).named_children() if isinstance(m, NonLocalBlock)]
            for layer in ("layer1", "layer2", "layer3", "layer4")}


def test_resnet50_has_agw_non_local_placement() -> None:
    # AGW: non_layers=[0,2,3,0] -> after the last 2 bottlenecks of layer2 (blocks 2, 3 of 4)
    # and the last 3 of layer3 (blocks 3, 4, 5 of 6), none in layer1 / layer4
    net = TwoStreamResNet("resnet50", pretrained=False, non_local=True)
    assert _non_local_names(net) == {"layer1": [], "layer2": ["nl2", "nl3"],
                                     "layer3": ["nl3", "nl4", "nl5"], "layer4": []}
    order = [n for n, _ in net.layer3.named_children()]
    assert order == ["0", "1", "2", "3", "nl3", "4", "nl4", "5", "nl5"]
    assert net.layer2.nl2.theta.in_channels == 512 and net.layer3.nl5.theta.in_channels == 1024
    # the residual blocks keep their names: torchvision's weights map onto them unchanged
    plain = TwoStreamResNet("resnet50", pretrained=False, non_local=False)
    assert set(plain.state_dict()) <= set(net.state_dict())


@pytest.mark.parametrize("arch", ["resnet18", "tiny"])
def test_small_archs_get_one_block_after_layer2_and_layer3(arch: str) -> None:
    net = TwoStreamResNet(arch, pretrained=False, non_local=True)
    last2, last3 = len(NON_LOCAL_AFTER[arch]["layer2"]), len(NON_LOCAL_AFTER[arch]["layer3"])
    names = _non_local_names(net)
    assert (len(names["layer2"]), len(names["layer3"])) == (last2, last3) == (1, 1)
    assert [n for n, _ in net.layer2.named_children()][-1].startswith("nl")  # after the last block
    assert _non_local_names(TwoStreamResNet(arch, pretrained=False, non_local=False)) == {
        "layer1": [], "layer2": [], "layer3": [], "layer4": []}


def test_non_local_block_starts_as_identity_and_then_attends() -> None:
    torch.manual_seed(0)
    block = NonLocalBlock(16)
    x = torch.randn(2, 16, 6, 3)
    assert torch.equal(block(x), x)  # zero-initialised BN on the output projection
    assert block.inter == 8
    with torch.no_grad():
        block.W[1].weight.fill_(1.0)
    block.eval()
    y = block(x)
    # embedded Gaussian by hand: softmax over positions of theta^T phi, then g, W, BN
    th = block.theta(x).flatten(2).transpose(1, 2)
    ph = block.phi(x).flatten(2)
    g = block.g(x).flatten(2).transpose(1, 2)
    a = torch.softmax(th @ ph, -1)
    ref = x + block.W((a @ g).transpose(1, 2).reshape(2, 8, 6, 3))
    torch.testing.assert_close(y, ref)
    # every position attends to every other: changing one position changes all outputs
    x2 = x.clone()
    x2[:, :, 0, 0] += 5.0
    assert ((block(x2) - y)[:, :, 1:, :].abs().sum(1) > 0).all()


def test_non_local_switch_reaches_the_model() -> None:
    on = make_task(model={"non_local": True}).model
    off = make_task(model={"non_local": False}).model
    assert any(isinstance(m, NonLocalBlock) for m in on.modules())
    assert not any(isinstance(m, NonLocalBlock) for m in off.modules())


# -- the memory holds both modalities ---------------------------------------------------


@pytest.mark.parametrize("size", [2, 3, 4, 7, 8, 16, 32])
def test_memory_slots_hold_both_modalities_for_every_size(size: int) -> None:
    # sampler-layout batches (P=3, K=4), several steps: every identity's valid slots must
    # contain visible and infrared views, whatever S
    p, k, steps = 3, 4, 3
    task = make_task(num_classes=p, model={"fusion": False, "memory": True, "memory_size": size})
    memory = task.model.memory
    assert isinstance(memory, MultiViewMemory)
    labels, mods = layout(p, k)
    for step in range(steps):
        # feature channel 0 carries the modality, so the slots tell which modality they hold
        feats = torch.zeros(labels.shape[0], memory.dim)
        feats[:, 0] = mods.float() + 10.0 * (step + 1)
        task.after_step(TaskState(feats, labels, {}))
        held = memory.bank[:, :, 0] % 10.0  # [C,S] modality code of each slot
        for c in range(p):
            valid = memory.valid[c]
            codes = set(held[c][valid].round().long().tolist())
            assert codes == {0, 1}, (size, step, c, codes)


def test_interleave_order() -> None:
    assert interleave_modalities(6).tolist() == [0, 3, 1, 4, 2, 5]


# -- per-sample means, weights, diagnostics ----------------------------------------------


def test_dual_loss_is_a_mean_over_both_modalities() -> None:
    gen = torch.Generator().manual_seed(0)
    lv, lr = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    y = torch.tensor([0, 1, 2, 3])
    expected = F.cross_entropy(torch.cat([lv, lr]), torch.cat([y, y]))
    assert dual_classifier_loss(lv, y, lr, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_total_weighs_every_term() -> None:
    weights = LossWeights(id=1.0, tri=0.5, dual=2.0, fuse=0.0, kd=3.0)
    task = make_task(model={"fusion": True, "memory": True}, loss={"weights": weights})
    task.after_step(task(*batch())[1])
    losses, _ = task(*batch(seed=1))
    expected = sum(getattr(weights, k) * v.item() for k, v in losses.items())
    assert set(losses) == {"id", "tri", "dual", "fuse", "kd"}
    assert task.total(losses).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="loss.weights.kd"):
        LossWeights(kd=-1.0)
    with pytest.raises(ConfigError, match="loss.weights.id"):
        LossWeights(id=float("nan"))
    assert LossConfig().triplet == "wrt" and LossConfig().triplet_pairs == "all"


def test_diagnostics_are_teacher_confidences_and_kd_weights() -> None:
    task = make_task(model={"fusion": True, "memory": True})
    task.after_step(task(*batch())[1])
    images, labels, mods = batch(seed=1)
    _, state = task(images, labels, mods)
    d = state.diagnostics
    assert set(d) == {"conf_student", "conf_fuse", "conf_mem", "kdw_fuse", "kdw_mem"}
    model = task.model
    with torch.no_grad():
        g = model(images, mods, split=labels.shape[0] // 2)["g"]
        q = torch.softmax(F.linear(g, model.classifier.weight), 1).gather(1, labels[:, None])
    assert d["conf_student"].item() == pytest.approx(q.mean().item(), rel=1e-4)
    for k, v in d.items():
        assert 0.0 <= v.item() <= 1.0, k
        assert not v.requires_grad
    no_kd = make_task(model={"fusion": True, "memory": False}, loss={"distill": False})
    assert set(no_kd(*batch())[1].diagnostics) == {"conf_student", "conf_fuse"}


def test_memory_without_distillation_changes_nothing() -> None:
    # the memory's only reader is the distillation: "+ memory" without it trains exactly as
    # "+ fusion" (the ablation reports it so, docs/method.md)
    runs = []
    for memory in (False, True):
        task = make_task(model={"fusion": True, "memory": memory}, loss={"distill": False})
        opt = torch.optim.SGD(task.model.parameters(), lr=0.1, momentum=0.9)
        losses_seen = []
        for step in range(3):
            losses, state = task(*batch(seed=step))
            opt.zero_grad()
            task.total(losses).backward()
            opt.step()
            task.after_step(state)
            losses_seen.append({k: v.item() for k, v in losses.items()})
        runs.append((losses_seen, {k: v for k, v in task.model.state_dict().items() if not k.startswith("memory")}))
    (a, wa), (b, wb) = runs
    assert a == b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
