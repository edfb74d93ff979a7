"""Cross-modality image retrieval (``vireid search``): rank a gallery folder for query images.

Ranking is by cosine similarity of the embeddings. Pure functions over what is handed in:
image paths, an embedding function ``embed(images [B,3,H,W] float, modality [B] long) -> [B,d]``
and the model's image size.
:func:`load_embed_fn` turns a ``model.pt`` path or an MLflow model URI into that triple.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vireid.data import IMAGE_SUFFIXES, MODALITY_CODES
from vireid.plotting import new_figure, save_png

log = logging.getLogger(__name__)
EmbedFn = Callable[[Tensor, Tensor], Tensor]


class SearchError(ValueError):
    """Bad search input: missing folder, no images, unreadable image; names the path."""


@dataclass(frozen=True)
class Match:
    """One gallery image in a ranked list."""

    rank: int  # 1-based
    path: Path
    similarity: float  # cosine similarity in [-1, 1]


@dataclass(frozen=True)
class QueryResult:
    """A query image and its top-k gallery matches, best first."""

    query: Path
    matches: list[Match]


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in or below ``folder``, sorted; errors name the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise SearchError(f"gallery folder {folder} does not exist")
    if not folder.is_dir():
        raise SearchError(f"gallery folder {folder} is not a folder")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SearchError(f"gallery folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def check_output(out: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], *,
                 force: bool = False) -> Path:
    """Refuse an output picture path that is a folder, one of the ``inputs`` (query, gallery
    or model files; never overwritten, even with ``force``) or an existing file without
    ``force``."""
    out = Path(out)
    if out.is_dir():
        raise SearchError(f"--out {out}: is a folder; give a file name (e.g. {out / 'search.png'})")
    target = out.resolve()
    for p in inputs:
        if Path(p).resolve() == target:
            raise SearchError(f"--out {out}: is one of the inputs ({p}); pick another file name "
                              "(inputs are never overwritten, not even with --force)")
    if out.exists() and not force:
        raise SearchError(f"--out {out}: exists; pass --force to overwrite it or pick another name")
    return out


def query_paths(queries: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Query arguments -> image paths: files as given, folders expanded to their images."""
    if not queries:
        raise SearchError("no query image given")
    out: list[Path] = []
    for q in map(Path, queries):
        if q.is_dir():
            out.extend(list_images(q))
        elif q.is_file():
            out.append(q)
        else:
            raise SearchError(f"query image {q} does not exist")
    return out


def read_image(path: str | os.PathLike[str]) -> Tensor:
    """uint8 RGB ``[3,H,W]`` (grayscale/infrared replicated to 3 channels); an unreadable
    file is a :class:`SearchError` naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as e:  # more pixels than PIL's limit: skipped, never decoded
        raise SearchError(f"cannot read image {path}: too large to decode safely ({e})") from e
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise SearchError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def read_gallery(paths: Sequence[Path], on_skip: Callable[[str], None] | None = None
                 ) -> tuple[list[Path], list[Tensor]]:
    """The readable gallery images and their paths: an unreadable one is skipped with a
    warning naming it (``on_skip(message)``, default: a logged warning); :class:`SearchError`
    only when none is readable."""
    kept: list[Path] = []
    images: list[Tensor] = []
    skipped: list[str] = []
    for p in paths:
        try:
            images.append(read_image(p))
        except SearchError as e:
            skipped.append(str(e))
            (on_skip or log.warning)(f"skipped a gallery image: {e}")
            continue
        kept.append(Path(p))
    if not kept:
        raise SearchError(f"no readable gallery image among {len(paths)} ({skipped[0] if skipped else 'none given'})")
    return kept, images


def preprocess(images: Sequence[Tensor], image_height: int, image_width: int) -> Tensor:
    """uint8 ``[3,H,W]`` images -> float ``[N,3,h,w]`` as the evaluator sees them."""
    from vireid.data.transforms import test_transform

    t = test_transform(image_height, image_width)
    return torch.stack([t(img) for img in images])


class _NormalisedEmbed:
    """An :data:`EmbedFn` as :func:`vireid.evaluation.extract.extract_features` takes it:
    ``embed(x, modality)`` L2-normalised (an MLflow model's output need not be)."""

    def __init__(self, embed: EmbedFn) -> None:
        self.fn = embed

    def embed(self, x: Tensor, modality: Tensor) -> Tensor:
        return F.normalize(self.fn(x, modality).float(), dim=1)


def embed_images(embed: EmbedFn, images: Tensor, modality: int, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> Tensor:
    """Embeddings ``[N,d]`` (float32, CPU, L2-normalised) of preprocessed ``images``, through
    the evaluation's extraction path (:func:`vireid.evaluation.extract.extract_features`)."""
    from vireid.evaluation.extract import extract_features

    if modality not in MODALITY_CODES.values():
        raise ValueError(f"modality must be 0 (visible) or 1 (infrared), got {modality}")
    batches = ({"image": images[i:i + batch_size],
                "modality": torch.full((len(images[i:i + batch_size]),), modality, dtype=torch.long),
                "index": torch.arange(i, min(i + batch_size, len(images)))}
               for i in range(0, len(images), batch_size))
    return torch.from_numpy(extract_features(_NormalisedEmbed(embed), batches, device, flip=False))


def rank(query: Tensor, gallery: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """Cosine similarities and gallery indices of the ``top_k`` best matches per query
    (``[Q,k]`` each, best first; ties broken by gallery order)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    sim = F.normalize(query.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T  # [Q,G]
    k = min(top_k, sim.shape[1])
    order = torch.argsort(-sim, dim=1, stable=True)[:, :k]
    return torch.gather(sim, 1, order), order


def search(embed: EmbedFn, queries: Sequence[Path], gallery: Sequence[Path], *,
           image_size: tuple[int, int], query_modality: int, gallery_modality: int,
           top_k: int = 5, batch_size: int = 64, device: str | torch.device = "cpu",
           on_skip: Callable[[str], None] | None = None) -> list[QueryResult]:
    """Embed queries and gallery, rank the gallery for each query by cosine similarity
    (unreadable gallery images are skipped with a warning, :func:`read_gallery`)."""
    h, w = image_size
    q = embed_images(embed, preprocess([read_image(p) for p in queries], h, w), query_modality, batch_size, device)
    gallery, g_images = read_gallery(gallery, on_skip)
    g = embed_images(embed, preprocess(g_images, h, w), gallery_modality, batch_size, device)
    sims, idx = rank(q, g, top_k)
    return [QueryResult(Path(qp), [Match(r + 1, Path(gallery[int(j)]), float(s))
                                   for r, (s, j) in enumerate(zip(sims[i], idx[i], strict=True))])
            for i, qp in enumerate(queries)]


def save_picture(path: str | os.PathLike[str], results: Sequence[QueryResult]) -> Path:
    """PNG (written atomically): one row per query, the query then its top-k matches titled
    with rank and similarity."""
    if not results:
        raise ValueError("no results to draw")
    k = max(len(r.matches) for r in results)
    fig = new_figure((1.4 * (k + 1), 2.8 * len(results)))
    axes = fig.subplots(len(results), k + 1, squeeze=False)
    for row, result in enumerate(results):
        cells = [(result.query, f"query\n{result.query.name}")]
        cells += [(m.path, f"#{m.rank} {m.similarity:.3f}\n{m.path.name}") for m in result.matches]
        for col in range(k + 1):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(cells):
                ax.imshow(read_image(cells[col][0]).permute(1, 2, 0).numpy())
                ax.set_title(cells[col][1], fontsize=6, color="navy" if col == 0 else "black")
            else:
                ax.axis("off")
    fig.tight_layout()
    return save_png(path, fig)


def check_device(device: str) -> torch.device:
    """``--device`` as a torch device; an unknown name, or CUDA where there is none, is a
    :class:`SearchError`."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise SearchError(f"--device {device}: not a torch device ({_first(e)}; e.g. cpu, cuda, cuda:0)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SearchError(f"--device {device}: no CUDA device on this machine (use --device cpu)")
    return dev


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load_embed_fn(model: str, *, tracking_uri: str, device: str | torch.device = "cpu"
                  ) -> tuple[EmbedFn, tuple[int, int]]:
    """``(embed, (height, width))`` from a ``model.pt`` path (``VIReIDModel.embed``) or an
    MLflow model URI (``models:/vireid@champion``, ``runs:/...``) in ``tracking_uri``."""
    if model.startswith(("models:/", "runs:/")):
        from vireid.tracking.model import load_logged_embedder

        module, meta = load_logged_embedder(tracking_uri, model, device)
        return module, (int(meta["image_height"]), int(meta["image_width"]))
    from vireid.training.checkpoint import load_model

    path = Path(model)
    if not path.is_file():
        raise SearchError(f"model file {path} does not exist (give a model.pt or a models:/ URI)")
    net, meta = load_model(path, device)
    return net.embed, (int(meta["image_height"]), int(meta["image_width"]))
