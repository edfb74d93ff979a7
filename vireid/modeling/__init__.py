"""Network, losses and training task of the method (docs/method.md sections 0-3)."""

from vireid.modeling.backbone import PretrainedWeightsError, TwoStreamResNet, load_pretrained_state
from vireid.modeling.export import (
    ExportableEmbedder,
    ExportError,
    export_program,
    inference_copy,
    load_program,
    save_program,
    verify_export,
)
from vireid.modeling.fusion import fuse_pairs, self_owned_attention
from vireid.modeling.memory import MultiViewMemory
from vireid.modeling.model import BNNeck, GeM, VIReIDModel
from vireid.modeling.task import ReIDTask, TaskState, check_batch_layout

__all__ = [
    "BNNeck",
    "ExportError",
    "ExportableEmbedder",
    "GeM",
    "MultiViewMemory",
    "PretrainedWeightsError",
    "ReIDTask",
    "TaskState",
    "TwoStreamResNet",
    "VIReIDModel",
    "check_batch_layout",
    "export_program",
    "fuse_pairs",
    "inference_copy",
    "load_pretrained_state",
    "load_program",
    "save_program",
    "self_owned_attention",
    "verify_export",
]
