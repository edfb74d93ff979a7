"""Checkpoints: the training state (for resuming) and the selected model (for inference).

Two file kinds, both plain ``torch.save`` dictionaries of tensors and built-in types, read
back with ``torch.load(weights_only=True)`` (no pickled code is ever executed):

- **training state** (``train_state.pt`` inside a Ray Train checkpoint directory):
  ``meta``, ``model`` (state dict incl. the multi-view memory buffers), ``optimizer``,
  ``scheduler``, ``epoch`` (epochs completed), ``sampler`` (``seed``, ``epoch``),
  ``history`` (per-epoch records) and ``best`` (the selected epoch's weights and metrics).
  No RNG state is stored: the training loop derives all randomness of epoch ``e`` from
  ``(seed, e, rank)``, so a resumed run continues exactly as an uninterrupted one.
- **model** (``model.pt``): ``meta`` and the selected ``model`` state dict; what
  evaluation, the registry and the search load via :func:`load_model`.

``meta`` records what the weights are for: ``arch``, ``num_classes``, ``feat_dim``,
``dataset``, ``regdb_trial``, ``image_height``, ``image_width``, ``identity_map``,
``selected_epoch``, ``selection`` (how it was chosen), ``val_metrics`` and ``config`` (the
whole config as a plain dict). Loading refuses a checkpoint whose architecture, dataset,
trial, class count or image size differs from what the caller expects
(:class:`CheckpointMismatchError` names the file and the field).

All writes are atomic (:mod:`vireid.io`).
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vireid.config import ModelConfig, build
from vireid.io import atomic_write_bytes

MODEL_FORMAT = "vireid-model/1"
STATE_FORMAT = "vireid-train-state/1"
STATE_FILE = "train_state.pt"
# fields that must agree between a checkpoint and the run that loads it
COMPAT_FIELDS: tuple[str, ...] = ("arch", "dataset", "regdb_trial", "num_classes", "feat_dim",
                                  "image_height", "image_width")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a vireid checkpoint; names the file."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was made for another architecture, dataset, trial, class count or image size."""

    def __init__(self, path: str | os.PathLike[str], field: str, found: Any, expected: Any) -> None:
        self.path, self.field, self.found, self.expected = Path(path), field, found, expected
        super().__init__(
            f"checkpoint {path}: {field} is {found!r} in the checkpoint but {expected!r} is "
            f"expected; it was trained for another {field.replace('_', ' ')} and cannot be used here")


def make_meta(
    *,
    arch: str,
    num_classes: int,
    feat_dim: int,
    dataset: str,
    regdb_trial: int | None,
    image_height: int,
    image_width: int,
    identity_map: Mapping[str, Any],
    config: Mapping[str, Any],
    selected_epoch: int | None = None,
    selection: str = "",
    val_metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The metadata dictionary stored with every checkpoint (see the module docstring)."""
    return {
        "arch": str(arch), "num_classes": int(num_classes), "feat_dim": int(feat_dim),
        "dataset": str(dataset), "regdb_trial": None if regdb_trial is None else int(regdb_trial),
        "image_height": int(image_height), "image_width": int(image_width),
        "identity_map": {"identities": [int(i) for i in identity_map["identities"]]},
        "selected_epoch": selected_epoch, "selection": selection,
        "val_metrics": {k: float(v) for k, v in (val_metrics or {}).items()},
        "config": dict(config),
    }


def check_compatible(meta: Mapping[str, Any], path: str | os.PathLike[str], **expected: Any) -> None:
    """Raise :class:`CheckpointMismatchError` for the first field of ``expected`` that differs.

    ``check_compatible(meta, path, arch="resnet18", dataset="sysu", num_classes=32)``;
    a field passed as None is not checked.
    """
    for field in COMPAT_FIELDS + tuple(sorted(set(expected) - set(COMPAT_FIELDS))):
        if field not in expected or expected[field] is None:
            continue
        if field not in meta:
            raise CheckpointError(f"checkpoint {path}: metadata has no {field!r} field")
        if meta[field] != expected[field]:
            raise CheckpointMismatchError(path, field, meta[field], expected[field])


def _save(path: str | os.PathLike[str], obj: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _load(path: str | os.PathLike[str], fmt: str) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"checkpoint {path}: not loadable with weights_only=True ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"checkpoint {path}: format is {found!r}, expected {fmt!r}")
    return obj


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()`` (parameters and buffers)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------
# training state


def save_train_state(
    path: str | os.PathLike[str],
    *,
    meta: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    sampler: Mapping[str, int],
    history: list[dict[str, Any]],
    best: Mapping[str, Any] | None,
) -> Path:
    """Write the whole training state after ``epoch`` completed epochs (atomically).

    ``best`` is ``{"epoch", "metrics", "model"}`` (the selected weights so far) or None.
    """
    return _save(path, {
        "format": STATE_FORMAT, "meta": dict(meta), "model": cpu_state_dict(model),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "epoch": int(epoch), "sampler": {k: int(v) for k, v in sampler.items()},
        "history": list(history), "best": None if best is None else dict(best),
    })


def load_train_state(path: str | os.PathLike[str], **expected: Any) -> dict[str, Any]:
    """Read a training state; ``expected`` fields are checked as in :func:`check_compatible`."""
    state = _load(path, STATE_FORMAT)
    check_compatible(state["meta"], path, **expected)
    return state


def restore_train_state(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Load model (incl. memory), optimiser and scheduler; return the epochs completed."""
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"])


def selected_from_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The selected weights of a training state and their metadata.

    The best validated epoch's weights when the state has one, else the live weights of the
    last completed epoch (no held-out identities: ``selected_epoch`` is the last epoch).
    """
    meta = dict(state["meta"])
    best = state.get("best")
    if best is None:
        meta["selected_epoch"] = int(state["epoch"])
        return dict(state["model"]), meta
    meta["selected_epoch"] = int(best["epoch"])
    meta["val_metrics"] = {k: float(v) for k, v in best["metrics"].items()}
    return dict(best["model"]), meta


# ---------------------------------------------------------------------------------------
# model (inference)


def save_model(path: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor],
               meta: Mapping[str, Any]) -> Path:
    """Write selected weights and their metadata as ``model.pt`` (atomically)."""
    return _save(path, {"format": MODEL_FORMAT, "meta": dict(meta),
                        "model": {k: v.detach().cpu() for k, v in state_dict.items()}})


def read_model_file(path: str | os.PathLike[str], **expected: Any) -> dict[str, Any]:
    """``{"meta", "model"}`` of a model file, with the ``expected`` fields checked."""
    obj = _load(path, MODEL_FORMAT)
    check_compatible(obj["meta"], path, **expected)
    return obj


def model_config_from_meta(meta: Mapping[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` the weights were trained with, never downloading weights
    (``pretrained`` is switched off: the checkpoint already holds every parameter)."""
    cfg = build(ModelConfig, meta["config"]["model"], "model")
    return dataclasses.replace(cfg, pretrained=False, weights_path="")


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu",
               **expected: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model from ``model.pt`` in eval mode on ``device``.

    Returns ``(model, meta)``; ``expected`` fields (``arch=``, ``dataset=``, ...) are checked
    first, and a state dict that does not fit the rebuilt model is refused naming the file.
    """
    from vireid.modeling import VIReIDModel

    obj = read_model_file(path, **expected)
    meta = obj["meta"]
    model = VIReIDModel(model_config_from_meta(meta), num_classes=int(meta["num_classes"]))
    try:
        model.load_state_dict(obj["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: weights do not fit a {meta['arch']} model "
                              f"({str(e).splitlines()[0]})") from e
    if int(model.feat_dim) != int(meta["feat_dim"]):
        raise CheckpointMismatchError(path, "feat_dim", meta["feat_dim"], int(model.feat_dim))
    return model.to(device).eval(), meta
