"""The registered model: an exportable inference wrapper logged with ``mlflow.pytorch``.

Format decision: MLflow 3 saves PyTorch models as ``pt2`` (``torch.export``) by default and
refuses to *load* pickled models unless ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is set, so
the model is logged as ``pt2``: no pickled code, no need for vireid on the loading side.
``pt2`` supports several tensor inputs, so the signature has two named tensor inputs::

    images   float32 [-1, 3, H, W]   normalised as vireid.data.transforms.test_transform
    modality int64   [-1]            0 visible, 1 infrared (anything else: RuntimeError)
    output   float32 [-1, d]         L2-normalised embedding (= VIReIDModel.embed)

``mlflow.pytorch.load_model("models:/vireid@champion")`` returns a module called as
``module(images, modality)``. (``pt2`` models with several inputs get no pyfunc flavour.)

The logged module is :class:`vireid.modeling.export.Embedder` (the inference path of
``VIReIDModel``, ``torch.export``-able with a dynamic batch size); MLflow runs
``torch.export`` on it from the signature and the input example.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from vireid.modeling.export import inference_copy
from vireid.tracking.store import TrackingError, use_tracking_uri

MODEL_ARTIFACT = "model"  # name of the logged model
INPUT_NAMES = ("images", "modality")


def pip_requirements() -> list[str]:
    """Pinned ``torch`` and ``torchvision`` of this environment (explicit: skips MLflow's
    slow requirement inference)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "torchvision")]


def signature(image_height: int, image_width: int, feat_dim: int):  # -> ModelSignature
    """Two named tensor inputs (see the module docstring), one embedding output."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([
            TensorSpec(np.dtype(np.float32), (-1, 3, image_height, image_width), INPUT_NAMES[0]),
            TensorSpec(np.dtype(np.int64), (-1,), INPUT_NAMES[1]),
        ]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, feat_dim), "embedding")]),
    )


def example_input(image_height: int, image_width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A batch of 2 (one visible, one infrared): ``torch.export`` keeps batch 1 static."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, image_height, image_width, generator=g)
    return images.numpy(), np.array([0, 1], dtype=np.int64)


def model_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a consumer needs besides the weights (stored in the MLmodel file)."""
    return {
        "image_height": int(meta["image_height"]), "image_width": int(meta["image_width"]),
        "feat_dim": int(meta["feat_dim"]), "arch": str(meta.get("arch", "")),
        "dataset": str(meta.get("dataset", "")), "modality_codes": {"visible": 0, "infrared": 1},
        "input": "images normalised with ImageNet mean/std (vireid.data.transforms.test_transform)",
    }


def log_embedder(tracking_uri: str, run_id: str, model: nn.Module, meta: Mapping[str, Any]) -> str:
    """Log the inference path of ``model`` (a ``VIReIDModel``) to run ``run_id`` as a ``pt2``
    MLflow model with signature and metadata; returns its ``models:/<model_id>`` URI.

    ``meta``: the checkpoint metadata (``image_height``, ``image_width``, ``feat_dim``...).
    """
    import mlflow

    h, w, d = int(meta["image_height"]), int(meta["image_width"]), int(meta["feat_dim"])
    embedder = inference_copy(model)
    example = example_input(h, w)
    with torch.no_grad():
        out = embedder(*(torch.from_numpy(a) for a in example))
    if tuple(out.shape) != (2, d):
        raise TrackingError(f"model embeds to {tuple(out.shape)[1:]} but meta feat_dim is {d}")
    with use_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pytorch.log_model(
            embedder, name=MODEL_ARTIFACT, signature=signature(h, w, d), input_example=example,
            serialization_format="pt2", pip_requirements=pip_requirements(),
            metadata=model_metadata(meta))
    return info.model_uri


def load_logged_embedder(tracking_uri: str, model_uri: str, device: str | torch.device = "cpu"
                         ) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model logged by :func:`log_embedder` (``models:/vireid@champion``,
    ``models:/<id>``, ``runs:/...``) -> ``(module(images, modality) -> [B,d], metadata)``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with use_tracking_uri(tracking_uri):
            info = mlflow.models.get_model_info(model_uri)
            module = mlflow.pytorch.load_model(model_uri)  # pt2: loaded on the CPU
    except MlflowException as e:
        raise TrackingError(f"cannot load {model_uri} from {tracking_uri}: {e.message}") from e
    if torch.device(device).type != "cpu":
        module = module.to(device)
    metadata = dict(info.metadata or {})
    if "image_height" not in metadata:
        shape = info.signature.inputs.inputs[0].shape if info.signature is not None else None
        if not shape or len(shape) != 4:
            raise TrackingError(f"{model_uri}: no image size in its metadata or signature")
        metadata.update(image_height=int(shape[2]), image_width=int(shape[3]))
    return module, metadata
