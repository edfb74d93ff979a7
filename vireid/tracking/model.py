"""Log the model to MLflow as a verified ``pt2`` program, and load a logged one back safely.

The registered model is an exportable inference wrapper logged with ``mlflow.pytorch``.

Format decision: the model is logged as ``pt2`` (``torch.export``): no pickled code, no need
for vireid on the loading side. MLflow 3.17 still *loads* pickled models by default
(``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` defaults to true), so :func:`load_logged_embedder`
checks the downloaded model (:func:`check_pt2_model`: pt2 files, no pickle files, no code
folder) before deserialising anything, and loads it with pickle deserialisation disabled.
``pt2`` supports several tensor inputs, so the signature has two named tensor inputs::

    images   float32 [-1, 3, H, W]   normalised as vireid.data.transforms.test_transform
    modality int64   [-1]            0 visible, 1 infrared (anything else: RuntimeError)
    output   float32 [-1, d]         L2-normalised embedding (= VIReIDModel.embed)

:func:`load_logged_embedder` (``models:/vireid@champion``) returns a module called as
``module(images, modality)``. (``pt2`` models with several inputs get no pyfunc flavour.)

The logged module is :class:`vireid.modeling.export.ExportableEmbedder` (the inference path of
``VIReIDModel``, ``torch.export``-able with a dynamic batch size); MLflow runs
``torch.export`` on it from the signature and the input example. Before anything is logged,
:func:`check_export` exports it the same way and checks that the program reproduces the eager
``VIReIDModel.embed`` on another batch size and both modalities (:data:`EXPORT_ATOL`).
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from vireid.data.sample import MODALITY_CODES
from vireid.io import environ_set
from vireid.modeling.export import ExportError, export_program, inference_copy, verify_export
from vireid.tracking.store import TrackingError, use_tracking_uri

MODEL_ARTIFACT = "model"  # name of the logged model
INPUT_NAMES = ("images", "modality")
#: Largest absolute difference allowed between the exported program's embeddings and the eager
#: model's (both L2-normalised: entries in [-1, 1]; float32 CPU kernels differ by ~1e-7).
EXPORT_ATOL = 1e-4


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
        "dataset": str(meta.get("dataset", "")), "modality_codes": dict(MODALITY_CODES),
        "input": "images normalised with ImageNet mean/std (vireid.data.transforms.test_transform)",
    }


def check_export(model: nn.Module, image_height: int, image_width: int, *, source: str = "the model",
                 atol: float = EXPORT_ATOL) -> float:
    """Export the inference path of ``model`` as :func:`log_embedder` logs it (``torch.export``
    of :func:`~vireid.modeling.export.inference_copy` on :func:`example_input`, batch
    dimension dynamic) and check that the program gives ``model.embed``'s embeddings on a
    batch of 3 (another size than the example's, both modalities) within ``atol``; returns the
    largest difference. :class:`TrackingError` naming ``source`` otherwise."""
    example = tuple(torch.from_numpy(a) for a in example_input(image_height, image_width))
    check = (torch.randn(3, 3, image_height, image_width, generator=torch.Generator().manual_seed(1)),
             torch.tensor([1, 0, 1]))
    try:
        return verify_export(model, export_program(model, example), check, atol=atol)
    except ExportError as e:
        raise TrackingError(f"{source}: its torch.export program (the model that would be logged) does "
                            f"not reproduce its embeddings: {e}; nothing was logged") from e


def log_embedder(tracking_uri: str, run_id: str, model: nn.Module, meta: Mapping[str, Any], *,
                 source: str = "the model") -> str:
    """Log the inference path of ``model`` (a ``VIReIDModel``) to run ``run_id`` as a ``pt2``
    MLflow model with signature and metadata; returns its ``models:/<model_id>`` URI.

    ``meta``: the checkpoint metadata (``image_height``, ``image_width``, ``feat_dim``...).
    The exported program is checked against the eager model first (:func:`check_export`;
    ``source``, e.g. the model file, names the model in its error).
    """
    import mlflow

    h, w, d = int(meta["image_height"]), int(meta["image_width"]), int(meta["feat_dim"])
    embedder = inference_copy(model)
    example = example_input(h, w)
    with torch.no_grad():
        out = embedder(*(torch.from_numpy(a) for a in example))
    if tuple(out.shape) != (2, d):
        raise TrackingError(f"model embeds to {tuple(out.shape)[1:]} but meta feat_dim is {d}")
    check_export(model, h, w, source=source)
    with use_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pytorch.log_model(
            embedder, name=MODEL_ARTIFACT, signature=signature(h, w, d), input_example=example,
            serialization_format="pt2", pip_requirements=pip_requirements(),
            metadata=model_metadata(meta))
    return info.model_uri


class UnsafeModelError(TrackingError):
    """A logged model that is not vireid's ``pt2`` (``torch.export``) format, or that ships
    code: refused *before* anything of it is deserialised."""


PT2_FILE = "model.pt2"  # what mlflow.pytorch writes for serialization_format="pt2"
PICKLE_FILES = ("model.pth", "pickle_module_info.txt")  # what it writes for "pickle"
_ALLOW_PICKLE = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


def check_pt2_model(local_dir: str | os.PathLike[str], model_uri: str = "") -> dict[str, Any]:
    """The parsed ``MLmodel`` of a downloaded MLflow model when it is a ``pt2`` PyTorch model
    without code; :class:`UnsafeModelError` otherwise.

    MLflow 3 records the serialisation format only through the files of the flavour's
    ``model_data`` folder (``model.pt2`` for pt2, ``model.pth`` + ``pickle_module_info.txt``
    for pickle); a ``serialization_format`` key, when a future MLflow writes one, must say
    ``pt2``. A flavour ``code`` folder is refused too: ``mlflow.pytorch.load_model`` puts it
    on ``sys.path`` (a module there can shadow any import).
    """
    root = Path(local_dir).resolve()
    who = model_uri or str(root)
    mlmodel = root / "MLmodel"
    if not mlmodel.is_file():
        raise UnsafeModelError(f"{who}: no MLmodel file: not an MLflow model")
    try:
        conf = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UnsafeModelError(f"{who}: unreadable MLmodel file ({type(e).__name__})") from e
    flavors = conf.get("flavors") if isinstance(conf, dict) else None
    flavor = flavors.get("pytorch") if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict):
        names = ", ".join(sorted(flavors)) if isinstance(flavors, dict) else "none"
        raise UnsafeModelError(f"{who}: not a PyTorch model (flavours: {names}); only vireid's "
                               "pt2 (torch.export) models are loaded")
    fmt = flavor.get("serialization_format")
    if fmt is not None and fmt != "pt2":
        raise UnsafeModelError(f"{who}: serialization_format is {fmt!r}; only 'pt2' is loaded "
                               "(pickled models can run arbitrary code when loaded)")
    if flavor.get("code"):
        raise UnsafeModelError(f"{who}: ships a code folder ({flavor['code']!r}) that loading "
                               "would put on sys.path; vireid's models carry no code: refused")
    data = root / str(flavor.get("model_data", "data"))
    try:
        data = data.resolve(strict=True)
    except OSError:
        raise UnsafeModelError(f"{who}: no model_data folder {flavor.get('model_data')!r}") from None
    if not data.is_relative_to(root) or not data.is_dir():
        raise UnsafeModelError(f"{who}: model_data {flavor.get('model_data')!r} is not a folder "
                               "inside the model")
    pickled = [name for name in PICKLE_FILES if (data / name).exists()]
    if pickled:
        raise UnsafeModelError(
            f"{who}: serialised with pickle ({', '.join(pickled)}): loading it could run "
            "arbitrary code, refused (vireid logs its models with serialization_format='pt2'; "
            "re-register the model with the register stage)")
    pt2 = data / PT2_FILE
    if not pt2.is_file() or pt2.is_symlink():
        raise UnsafeModelError(f"{who}: no {PT2_FILE} in its model_data: not a pt2 model, refused")
    return conf


@contextmanager
def pickle_deserialization_disabled() -> Iterator[None]:
    """``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` for the block (MLflow 3.17 defaults to
    true), so MLflow also checks that the pt2 archive holds no pickled record."""
    with environ_set(_ALLOW_PICKLE, "false"):
        yield


def load_logged_embedder(tracking_uri: str, model_uri: str, device: str | torch.device = "cpu"
                         ) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model logged by :func:`log_embedder` (``models:/vireid@champion``,
    ``models:/<id>``, ``runs:/...``) -> ``(module(images, modality) -> [B,d], metadata)``.

    The model is downloaded to a temporary folder and checked by :func:`check_pt2_model`
    before anything is deserialised (a pickled model or one with a code folder is an
    :class:`UnsafeModelError`); it is then loaded with pickle deserialisation disabled.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="vireid-model-") as tmp:
        try:
            with use_tracking_uri(tracking_uri):
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        except MlflowException as e:
            raise TrackingError(f"cannot load {model_uri} from {tracking_uri}: {e.message}") from e
        check_pt2_model(local, model_uri)
        info = Model.load(str(local / "MLmodel"))
        try:
            with pickle_deserialization_disabled():
                module = mlflow.pytorch.load_model(str(local))  # pt2: loaded on the CPU
        except MlflowException as e:
            raise UnsafeModelError(f"{model_uri}: refused by MLflow's pt2 check: {e.message}") from e
    if torch.device(device).type != "cpu":
        module = module.to(device)
    metadata = dict(info.metadata or {})
    if "image_height" not in metadata:
        shape = info.signature.inputs.inputs[0].shape if info.signature is not None else None
        if not shape or len(shape) != 4:
            raise TrackingError(f"{model_uri}: no image size in its metadata or signature")
        metadata.update(image_height=int(shape[2]), image_width=int(shape[3]))
    return module, metadata
