"""Nothing lost, nothing left behind: ``vireid search --out`` never overwrites an input or an
existing file without ``--force``; a stage removes what a killed run of it left; stopping
``vireid mlflow-ui`` stops the MLflow server it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests._params import REPO, params_file
from vireid.cli import main
from vireid.config import Config, ModelConfig, config_to_dict
from vireid.io import remove_stale_temporaries, stale_temporaries


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vireid.modeling import VIReIDModel
    from vireid.training.checkpoint import make_meta, save_model

    cfg = Config(model=ModelConfig(arch="tiny", pretrained=False, memory_size=2))
    torch.manual_seed(0)
    model = VIReIDModel(cfg.model, num_classes=4)
    meta = make_meta(arch="tiny", num_classes=4, feat_dim=model.feat_dim, dataset="sysu", regdb_trial=None,
                     image_height=64, image_width=32, identity_map={"identities": [0, 1, 2, 3]},
                     config=config_to_dict(cfg))
    return save_model(tmp_path_factory.mktemp("m") / "model.pt", model.state_dict(), meta)


def _images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(len(str(folder)))
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.png" for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(p)
    return paths


def test_search_out_refuses_inputs_existing_files_and_folders(model_file: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    gallery = _images(tmp_path / "g", 3)
    query = _images(tmp_path / "q", 1)[0]
    before = {p: p.read_bytes() for p in [query, *gallery, model_file]}

    def search(out: Path, *extra: str) -> tuple[int, str]:
        code = main(["search", str(query), "--gallery", str(tmp_path / "g"), "--model", str(model_file),
                     "--out", str(out), *extra])
        return code, capsys.readouterr().err

    for victim in (query, gallery[1], model_file):  # an input: never, not even with --force
        code, err = search(victim, "--force")
        assert code == 2 and "is one of the inputs" in err and len(err.splitlines()) == 1
    code, err = search(tmp_path / "g")
    assert code == 2 and err == f"error: --out {tmp_path / 'g'}: is a folder; give a file name (e.g. {tmp_path / 'g' / 'search.png'})\n"
    assert {p: p.read_bytes() for p in before} == before

    existing = tmp_path / "result.png"
    existing.write_bytes(b"keep me")
    code, err = search(existing)
    assert code == 2 and "exists; pass --force" in err and existing.read_bytes() == b"keep me"
    code, _ = search(existing, "--force")
    assert code == 0 and existing.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_io_finds_only_the_temporaries_of_the_output(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    (tmp_path / ".shards.k3j.tmp").mkdir()
    (tmp_path / ".shards.k3j.tmp" / "part-0.arrow").write_bytes(b"x" * 10)
    (tmp_path / ".shards.old").mkdir()
    (tmp_path / ".shards2.abc.tmp").mkdir()  # another output's: kept
    (tmp_path / ".model.pt.x1.tmp").write_bytes(b"half")
    assert [p.name for p in stale_temporaries(out)] == [".shards.k3j.tmp", ".shards.old"]
    removed = remove_stale_temporaries(out, tmp_path / "model.pt")
    assert sorted(p.name for p in removed) == [".model.pt.x1.tmp", ".shards.k3j.tmp", ".shards.old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shards2.abc.tmp"]


def test_prepare_stage_removes_what_a_killed_prepare_left(tmp_path: Path) -> None:
    from vireid.data.shards import ShardSet
    from vireid.stages import prepare as prepare_stage
    from vireid.stages import synth as synth_stage

    params = params_file(tmp_path / "params.yaml", {"data": {
        "root": str(tmp_path / "raw" / "SYSU-MM01"), "image_height": 32, "image_width": 16, "holdout_identities": 1,
        "synth": {"sysu_identities": 12, "sysu_images_per_camera": 1, "image_height": 32, "image_width": 16}}})
    (tmp_path / "raw").mkdir()
    stale_tree = tmp_path / "raw" / ".SYSU-MM01.a1b2.tmp"  # a killed synth
    (stale_tree / "cam1").mkdir(parents=True)
    synth_stage.main(["--params", str(params)])
    assert not stale_tree.exists()
    (tmp_path / "data").mkdir()
    stale = tmp_path / "data" / ".shards.x7y8.tmp"  # a killed prepare: a whole shard set
    stale.mkdir()
    (stale / "train-00000.arrow").write_bytes(b"\0" * 4096)
    prepare_stage.main(["--params", str(params), "--out", str(tmp_path / "data" / "shards")])
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["shards"]
    assert ShardSet(tmp_path / "data" / "shards").manifest["dataset"] == "sysu"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_mlflow_ui_stops_its_server(tmp_path: Path, sig: signal.Signals) -> None:
    from vireid.tracking.server import free_port

    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "vireid.cli", "mlflow-ui", "--port", str(port),
                             "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/health"
    try:
        deadline = time.monotonic() + 120
        while not _answers(url):
            assert proc.poll() is None and time.monotonic() < deadline, "the UI did not start"
            time.sleep(0.5)
        proc.send_signal(sig)  # to vireid only, as a supervisor (or kill) does
        assert proc.wait(timeout=60) in (0, 130)
        deadline = time.monotonic() + 30
        while _answers(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _answers(url), "the MLflow server outlived vireid mlflow-ui"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_one_bad_gallery_image_is_skipped_with_a_warning(model_file: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    gallery = _images(tmp_path / "g", 3)
    bad = tmp_path / "g" / "broken.png"
    bad.write_bytes(b"not a png at all")
    query = _images(tmp_path / "q", 1)[0]
    code = main(["search", str(query), "--gallery", str(tmp_path / "g"), "--model", str(model_file),
                 "--top-k", "5", "--out", str(tmp_path / "o.png")])
    out, err = capsys.readouterr()
    assert code == 0 and err.startswith(f"warning: skipped a gallery image: cannot read image {bad}")
    ranked = [line.split()[2] for line in out.splitlines()[1:-1]]
    assert sorted(ranked) == sorted(map(str, gallery))
    for p in gallery:
        p.write_bytes(b"broken too")
    code = main(["search", str(query), "--gallery", str(tmp_path / "g"), "--model", str(model_file),
                 "--out", str(tmp_path / "o2.png")])
    err = capsys.readouterr().err
    assert code == 2 and "error: no readable gallery image among 4" in err and not (tmp_path / "o2.png").exists()


def test_search_skips_a_decompression_bomb_and_refuses_an_unknown_device(
        model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 25 item 7: an image over PIL's pixel limit (a 20000x10000 PNG; here the limit is
    lowered below a 40x20 image) is skipped with a warning, not a DecompressionBombError
    traceback; ``--device gpu`` is one line, exit 2."""
    from PIL import Image as PILImage

    gallery = _images(tmp_path / "g", 2)
    big = tmp_path / "g" / "big.png"
    PILImage.fromarray(np.zeros((400, 200, 3), dtype=np.uint8)).save(big)
    query = _images(tmp_path / "q", 1)[0]
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 20_000)  # 400*200 = 80000 > 2x the limit: a "bomb"
    code = main(["search", str(query), "--gallery", str(tmp_path / "g"), "--model", str(model_file),
                 "--out", str(tmp_path / "o.png")])
    out, err = capsys.readouterr()
    assert code == 0 and err.startswith(f"warning: skipped a gallery image: cannot read image {big}: too large")
    assert sorted(line.split()[2] for line in out.splitlines()[1:-1]) == sorted(map(str, gallery))
    code = main(["search", str(query), "--gallery", str(tmp_path / "g"), "--model", str(model_file),
                 "--device", "gpu", "--out", str(tmp_path / "o2.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --device gpu: not a torch device (") and len(err.splitlines()) == 1


def test_search_and_restore_create_no_store_where_they_only_read(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """Issue 25 item 12: ``vireid search --model models:/...`` and ``vireid restore`` against a
    store that does not exist say so in one line and create nothing there (MLflow would create
    an empty sqlite database, and its folder, wherever the URI points)."""
    query = _images(tmp_path / "q", 1)[0]
    _images(tmp_path / "g", 2)
    store = tmp_path / "nowhere" / "mlflow.db"
    uri = f"sqlite:///{store}"
    code = main(["search", str(query), "--gallery", str(tmp_path / "g"), "--model", "models:/vireid@champion",
                 "--tracking-uri", uri, "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: {uri}: no MLflow store there (nothing is registered or logged in it; run the "
                                 "pipeline first, or pass --tracking-uri / --params of the store)\n")
    code = main(["restore", "0123abcd", "--tracking-uri", uri, "--dest", str(tmp_path / "dest")])
    assert code == 2 and capsys.readouterr().err.startswith(f"error: {uri}: no MLflow store there")
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "dest").exists()


def test_outputs_are_readable_by_the_group_and_others(tmp_path: Path) -> None:
    """Issue 25 item 12: an atomically written file has the mode a plain open() gives (0644
    under umask 022), not the temporary's 0600; an atomic directory 0755, not 0700."""
    from vireid.io import atomic_directory, atomic_write_json

    saved = os.umask(0o022)
    try:
        assert atomic_write_json(tmp_path / "r.json", {"a": 1}).stat().st_mode & 0o777 == 0o644
        with atomic_directory(tmp_path / "d") as d:
            (d / "x").write_text("x")
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
        os.umask(0o077)
        assert atomic_write_json(tmp_path / "s.json", {"a": 1}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(saved)
