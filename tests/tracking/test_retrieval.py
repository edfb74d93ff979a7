"""Image retrieval (:mod:`vireid.retrieval`, ``vireid search``): ranking, the CLI on generated
images, error messages naming the path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vireid.cli import main
from vireid.retrieval import SearchError, list_images, rank, read_image


def _write(path: Path, seed: int, size: tuple[int, int] = (40, 20)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)).save(path)
    return path


def test_rank_orders_by_cosine() -> None:
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.0, 1.0], [2.0, 0.1], [1.0, 1.0], [-1.0, 0.0]])
    sims, idx = rank(q, g, top_k=3)
    assert idx.tolist() == [[1, 2, 0]]
    assert sims[0, 0] == pytest.approx(2.0 / (4.01 ** 0.5))
    assert rank(q, g, top_k=10)[1].shape == (1, 4)


def test_cli_search_finds_the_true_match_first(model_file: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    gallery = tmp_path / "gallery"
    for i in range(6):
        _write(gallery / f"person{i}.png", seed=100 + i)
    query = _write(tmp_path / "q" / "query.jpg", seed=0)
    (gallery / "sub").mkdir()
    Image.open(query).save(gallery / "sub" / "match.png")  # the query's decoded pixels
    out = tmp_path / "result.png"
    code = main(["search", str(query), "--gallery", str(gallery), "--model", str(model_file),
                 "--query-modality", "visible", "--gallery-modality", "visible", "--top-k", "3",
                 "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"query {query}"
    ranked = [line.split() for line in lines[1:4]]
    assert [r[0] for r in ranked] == ["1", "2", "3"]
    assert ranked[0][2] == str(gallery / "sub" / "match.png")  # the same picture (re-encoded)
    sims = [float(r[1]) for r in ranked]
    assert sims == sorted(sims, reverse=True) and sims[0] > 0.99
    assert lines[4] == f"picture: {out}"
    assert read_image(out).shape[0] == 3 and not list(tmp_path.glob(".result.png.*"))


def test_cli_search_with_a_registered_model(target, logged, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    from vireid.tracking import register

    run_id, model_uri = logged
    register(target.tracking_uri, model_name="search-test", model_uri=model_uri, run_id=run_id,
             protocol="p", headline="sysu/all/single/mAP", value=1.0, data_hash="d", git_commit="c")
    gallery = tmp_path / "gallery"
    paths = [_write(gallery / f"g{i}.png", seed=i) for i in range(4)]
    code = main(["search", str(paths[2]), "--gallery", str(gallery), "--model", "models:/search-test@champion",
                 "--tracking-uri", target.tracking_uri, "--query-modality", "infrared",
                 "--gallery-modality", "infrared", "--top-k", "2", "--out", str(tmp_path / "r.png")])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[2] == str(paths[2]) and len(lines) == 4
    assert (tmp_path / "r.png").is_file()


def test_errors_name_the_file_or_folder(model_file: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    query = _write(tmp_path / "query.png", seed=0)

    def run(*args: str) -> str:
        assert main(["search", *args, "--model", str(model_file), "--out", str(tmp_path / "o.png")]) == 2
        return capsys.readouterr().err

    missing = tmp_path / "nowhere"
    assert f"gallery folder {missing} does not exist" in run(str(query), "--gallery", str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert f"gallery folder {empty} holds no images" in run(str(query), "--gallery", str(empty))
    broken = tmp_path / "broken"
    _write(broken / "ok.png", seed=1)
    (broken / "bad.jpg").write_bytes(b"not a jpeg")
    # an unreadable gallery image is skipped with a warning; an unreadable query is an error
    assert main(["search", str(query), "--gallery", str(broken), "--model", str(model_file),
                 "--out", str(tmp_path / "o.png")]) == 0
    assert f"warning: skipped a gallery image: cannot read image {broken / 'bad.jpg'}" in capsys.readouterr().err
    assert f"cannot read image {broken / 'bad.jpg'}" in run(str(broken / "bad.jpg"), "--gallery", str(broken),
                                                            "--force")
    assert f"query image {tmp_path / 'q.png'} does not exist" in run(str(tmp_path / "q.png"), "--gallery", str(broken))
    good = tmp_path / "good"
    _write(good / "ok.png", seed=2)
    assert main(["search", str(query), "--gallery", str(good), "--model", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "m.pt") in err
    with pytest.raises(SearchError, match="is not a folder"):
        list_images(query)
