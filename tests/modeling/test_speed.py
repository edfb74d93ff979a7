"""compile_for_speed keeps parameters, state_dict keys and the numbers of the model."""

import torch

from vireid.config import LossConfig, ModelConfig
from vireid.modeling import ReIDTask, VIReIDModel
from vireid.modeling.speed import compile_for_speed


def test_compiled_model_matches_eager_and_keeps_state() -> None:
    torch.manual_seed(0)
    model = VIReIDModel(ModelConfig(arch="tiny", pretrained=False, memory_size=2), 4)
    reference = VIReIDModel(ModelConfig(arch="tiny", pretrained=False, memory_size=2), 4)
    reference.load_state_dict(model.state_dict())
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    compile_for_speed(model, backend="aot_eager")
    assert [id(p) for p in model.parameters()] == params  # optimisers keep working
    assert list(model.state_dict()) == keys  # checkpoints keep working
    x = torch.randn(8, 3, 64, 32)
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    mods = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    losses, _ = ReIDTask(model, LossConfig())(x.contiguous(memory_format=torch.channels_last), labels, mods)
    ref_losses, _ = ReIDTask(reference, LossConfig())(x, labels, mods)
    assert losses.keys() == ref_losses.keys()
    for name in losses:
        torch.testing.assert_close(losses[name], ref_losses[name], rtol=1e-4, atol=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_split_routing_equals_index_routing() -> None:
    """Routing by the sampler's halves gives what per-sample routing gives, in train mode too."""
    torch.manual_seed(1)
    model = VIReIDModel(ModelConfig(arch="tiny", pretrained=False, fusion=False, memory=False), 4)
    x = torch.randn(6, 3, 64, 32)
    mods = torch.tensor([0, 0, 0, 1, 1, 1])
    by_index = model(x, mods)["g"]
    by_split = model(x, mods, split=3)["g"]
    torch.testing.assert_close(by_split, by_index)
    swapped = model(x, mods, split=2)["g"]  # a wrong split routes a sample through the wrong stem
    assert not torch.allclose(swapped, by_index)
