"""GPU speed-ups of the training step: channels_last memory format and ``torch.compile``.

They leave the numerics of the method unchanged (up to bf16 rounding).

The per-modality routing of the stems picks rows with a data-dependent ``nonzero``, which
the compiler can only follow with dynamic shapes; so the routing stays eager and the
static-shape regions are compiled one by one: each stem, the shared trunk
(``layer1..layer4``), and GeM pooling. bf16 autocast is the training loop's business.
"""

from __future__ import annotations

import torch

from vireid.modeling.model import VIReIDModel


def compile_for_speed(model: VIReIDModel, *, channels_last: bool = True, compile_regions: bool = True,
                      mode: str | None = None, backend: str = "inductor") -> VIReIDModel:
    """Convert ``model`` in place to channels_last and/or compile its static regions.

    ``mode``: a ``torch.compile`` mode (``None``: default; ``"reduce-overhead"`` adds CUDA
    graphs, which pays off when the step is bound by kernel launches). Parameters and
    buffers are the same objects afterwards, so optimisers, checkpoints and the memory
    keep working; ``state_dict`` keys are unchanged. ``backend``: the compiler backend
    (tests use ``aot_eager``, which traces the same graphs without generating kernels).
    """
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if not compile_regions:
        return model
    bb = model.backbone
    for stem in bb.stems:
        stem.compile(dynamic=False, mode=mode, backend=backend)  # in place: state_dict keys stay as they are
    bb.trunk = torch.compile(bb.trunk, dynamic=False, mode=mode, backend=backend)  # type: ignore[method-assign]
    model.pool.compile(dynamic=False, mode=mode, backend=backend)
    return model
