"""PNG pictures from matplotlib figures, without pyplot: no backend switch, no global figure list.

A library function must not call ``matplotlib.use("Agg")`` (that changes the backend of a
notebook that imported it) nor leave figures in pyplot's list; :func:`new_figure` makes a
figure on its own Agg canvas instead, which renders to PNG on any backend and is freed like
any object. :func:`png_bytes` renders it; :func:`save_png` writes it atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vireid.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure of ``figsize`` inches on its own Agg canvas (``fig.subplots(...)`` for axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: float = 100) -> bytes:
    """The PNG of ``fig`` at ``dpi``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(path: str | os.PathLike[str], fig: Figure, dpi: float = 100) -> Path:
    """Write the PNG of ``fig`` to ``path`` atomically (:func:`vireid.io.atomic_write_bytes`)."""
    return atomic_write_bytes(path, png_bytes(fig, dpi))
