"""PNG pictures without pyplot: the caller's matplotlib backend is left as it was."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from vireid.plotting import new_figure, png_bytes, save_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_png_of_a_figure_written_atomically(tmp_path: Path) -> None:
    fig = new_figure((2, 1))
    fig.subplots().plot([0, 1], [1, 0])
    data = png_bytes(fig, dpi=50)
    assert data[:8] == PNG_MAGIC
    out = save_png(tmp_path / "sub" / "f.png", fig, dpi=50)
    assert out.read_bytes() == data and sorted(p.name for p in out.parent.iterdir()) == ["f.png"]


def test_library_pictures_keep_the_callers_backend(tmp_path: Path) -> None:
    # a fresh interpreter, as a notebook with its own backend: no matplotlib.use, no pyplot
    code = textwrap.dedent(f"""
        import sys
        import matplotlib
        matplotlib.use("svg")
        import numpy as np
        from PIL import Image
        from vireid.evaluation.report import plot_cmc, plot_ranked_list
        from vireid.retrieval import Match, QueryResult, save_picture

        out = {str(tmp_path)!r}
        plot_cmc(out + "/cmc.png", {{"sysu/all/single": np.linspace(0.2, 0.9, 5)}})
        img = np.zeros((8, 4, 3), np.uint8)
        plot_ranked_list(out + "/ranked.png", [0], np.array([[0, 1]]), np.array([[True, False]]),
                         [img], [img, img])
        Image.fromarray(img).save(out + "/q.png")
        q = __import__("pathlib").Path(out + "/q.png")
        save_picture(out + "/search.png", [QueryResult(q, [Match(1, q, 1.0)])])
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["svg", "False"]
    for name in ("cmc.png", "ranked.png", "search.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
