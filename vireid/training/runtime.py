"""How the training step runs on its device: precision, memory format, compilation.

``train.precision``, ``train.memory_format`` and ``train.compile`` are resolved once against
the device (``auto``: the fast setting on a GPU, plain fp32 eager on a CPU) into a
:class:`StepRuntime`; the loop (:mod:`vireid.training.loop`) and the optimiser
(:mod:`vireid.training.schedule`: fused SGD on CUDA, foreach elsewhere) read it. None of the
switches changes the method's mathematics: bf16 autocast keeps the losses, distances and
GeM in float32, channels_last is a layout, and the compiled regions compute the same graph.

What the machine can do is probed by the caller (:class:`vireid.training.loop.Trainer`) and
handed in: whether a C compiler is installed (Triton and Inductor build kernels with one at
run time) and whether the CUDA device computes bf16 natively (compute capability 8.0+). An
``auto`` the machine cannot run falls back (eager, fp32) with a note for the log; an explicit
setting it cannot run is a :class:`~vireid.config.ConfigError` naming the key. On CUDA the
runtime also turns on cuDNN's autotuner (:meth:`StepRuntime.apply`), as the AGW recipe does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vireid.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class StepRuntime:
    """The resolved switches of one training run."""

    autocast_dtype: torch.dtype | None  # bf16 for autocast, None: fp32 eager
    channels_last: bool  # model and input batches in channels_last memory format
    compile_regions: bool  # torch.compile the stems, trunk and pooling (vireid.modeling.speed)
    device_type: str  # "cuda" | "cpu" ...
    cudnn_benchmark: bool = False  # torch.backends.cudnn.benchmark: autotune convolutions (fixed shapes; on CUDA)
    notes: tuple[str, ...] = ()  # one warning line per auto setting the machine could not run (logged once, by rank 0)

    @property
    def precision(self) -> str:
        """``bf16`` or ``fp32`` (for logs and summaries)."""
        return "bf16" if self.autocast_dtype is torch.bfloat16 else "fp32"

    def autocast(self) -> torch.autocast:
        """The autocast context of the forward pass (disabled in fp32)."""
        return torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=self.autocast_dtype is not None)

    def apply(self) -> None:
        """Set the process-wide backend switches this runtime asks for (cuDNN autotuning)."""
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True

    def describe(self) -> str:
        """One line for the log."""
        return (f"{self.precision}, {'channels_last' if self.channels_last else 'contiguous'}, "
                f"{'compiled regions' if self.compile_regions else 'eager'} on {self.device_type}")


def resolve_runtime(cfg: TrainConfig, device: torch.device, *, has_c_compiler: bool,
                    bf16_native: bool) -> StepRuntime:
    """``cfg``'s switches for ``device``: each ``auto`` is the GPU setting on CUDA, plain on CPU.

    ``has_c_compiler``: a C compiler is installed (compiled regions need one). ``bf16_native``:
    the CUDA device computes bf16 natively (ignored on other devices: the CPU autocasts to
    bf16 in software). ``auto`` falls back to eager / fp32 with a note; an explicit
    ``compile: regions`` or ``precision: bf16`` the machine cannot run raises ConfigError.
    """
    gpu = device.type == "cuda"
    notes: list[str] = []
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if gpu else "fp32")
    if precision == "bf16" and gpu and not bf16_native:
        if cfg.precision == "bf16":
            raise ConfigError("train.precision: bf16 but this GPU has no native bf16 (compute capability "
                              "below 8.0); set train.precision: fp32 or auto")
        precision = "fp32"
        notes.append("train.precision: auto runs fp32: this GPU has no native bf16 (compute capability below 8.0)")
    layout = cfg.memory_format if cfg.memory_format != "auto" else ("channels_last" if gpu else "contiguous")
    compiled = cfg.compile if cfg.compile != "auto" else ("regions" if gpu else "none")
    if compiled == "regions" and not has_c_compiler:
        if cfg.compile == "regions":
            raise ConfigError("train.compile: regions needs a C compiler (torch.compile builds kernels with "
                              "one at run time) and none was found (CC, cc, gcc, clang); install one or "
                              "set train.compile: none")
        compiled = "none"
        notes.append("train.compile: auto runs eager: no C compiler found (CC, cc, gcc, clang) for torch.compile")
    return StepRuntime(autocast_dtype=torch.bfloat16 if precision == "bf16" else None,
                       channels_last=layout == "channels_last", compile_regions=compiled == "regions",
                       device_type=device.type, cudnn_benchmark=gpu, notes=tuple(notes))
