"""How the training step runs on its device: precision, memory format, compilation.

``train.precision``, ``train.memory_format`` and ``train.compile`` are resolved once against
the device (``auto``: the fast setting on a GPU, plain fp32 eager on a CPU) into a
:class:`StepRuntime`; the loop (:mod:`vireid.training.loop`) and the optimiser
(:mod:`vireid.training.schedule`: fused SGD on CUDA, foreach elsewhere) read it. None of the
switches changes the method's mathematics: bf16 autocast keeps the losses, distances and
GeM in float32, channels_last is a layout, and the compiled regions compute the same graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vireid.config import TrainConfig


@dataclass(frozen=True)
class StepRuntime:
    """The resolved switches of one training run."""

    autocast_dtype: torch.dtype | None  # bf16 for autocast, None: fp32 eager
    channels_last: bool  # model and input batches in channels_last memory format
    compile_regions: bool  # torch.compile the stems, trunk and pooling (vireid.modeling.speed)
    device_type: str  # "cuda" | "cpu" ...

    @property
    def precision(self) -> str:
        """``bf16`` or ``fp32`` (for logs and summaries)."""
        return "bf16" if self.autocast_dtype is torch.bfloat16 else "fp32"

    def autocast(self) -> torch.autocast:
        """The autocast context of the forward pass (disabled in fp32)."""
        return torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=self.autocast_dtype is not None)

    def describe(self) -> str:
        """One line for the log."""
        return (f"{self.precision}, {'channels_last' if self.channels_last else 'contiguous'}, "
                f"{'compiled regions' if self.compile_regions else 'eager'} on {self.device_type}")


def resolve_runtime(cfg: TrainConfig, device: torch.device) -> StepRuntime:
    """``cfg``'s switches for ``device``: each ``auto`` is the GPU setting on CUDA, plain on CPU."""
    gpu = device.type == "cuda"
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if gpu else "fp32")
    layout = cfg.memory_format if cfg.memory_format != "auto" else ("channels_last" if gpu else "contiguous")
    compiled = cfg.compile if cfg.compile != "auto" else ("regions" if gpu else "none")
    return StepRuntime(autocast_dtype=torch.bfloat16 if precision == "bf16" else None,
                       channels_last=layout == "channels_last", compile_regions=compiled == "regions",
                       device_type=device.type)
