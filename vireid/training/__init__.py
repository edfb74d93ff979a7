"""Training: AGW optimiser/schedule, checkpoints, the per-epoch loop, Ray Train.

- :mod:`~vireid.training.schedule`: ``build_optimizer``, ``build_scheduler``, ``lr_factor``.
- :mod:`~vireid.training.checkpoint`: training state and model files, ``load_model``.
- :mod:`~vireid.training.loop`: ``Trainer`` and the per-epoch functions (no Ray needed).
- :mod:`~vireid.training.ray_train`: ``train_loop_per_worker``, ``build_trainer``, ``fit``
  (imported on demand: it imports Ray).
"""

from vireid.training.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_model,
    load_train_state,
    read_model_file,
    save_model,
)
from vireid.training.schedule import build_optimizer, build_scheduler, lr_factor, param_groups

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "build_optimizer",
    "build_scheduler",
    "load_model",
    "load_train_state",
    "lr_factor",
    "param_groups",
    "read_model_file",
    "save_model",
]
