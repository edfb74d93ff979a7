"""The probes of issue 25 through ``dvc repro`` (what ``make run`` ran) and ``vireid repro``
(what ``make run`` runs now): exit code, the one error line, and the outputs of the last
successful run still there (and, under DVC, still those ``dvc.lock`` records).

A throw-away DVC project holds a copy of this repository's code, ``dvc.yaml`` and
``params.yaml``, with stand-in outputs recorded in its ``dvc.lock`` by ``dvc commit`` (no stage
runs to make them). Each probe edits ``params.yaml``; the stage that DVC then reruns fails in
its first lines (no data is read, no Ray or MLflow started), so the whole module takes seconds
per probe."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests._params import REPO

ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "PYTHONWARNINGS": "ignore", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
for _key in ("VIREID_DEBUG", "MLFLOW_TRACKING_URI", "PYTHONPATH"):
    ENV.pop(_key, None)

OUTPUTS = ("outputs/train/model.pt", "outputs/train/train_summary.json", "outputs/train/history.csv",
           "outputs/train/mlflow_run.json", "outputs/eval/metrics.json", "outputs/eval/cmc.csv",
           "outputs/eval/cmc.png", "outputs/eval/ranked_list.png", "outputs/register/registration.json")


def _edit(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)
    return edit


#: name -> (edit of params.yaml, the error line under vireid (prefix), what DVC says when DVC
#: itself refuses the file before any stage runs (None: a stage runs and prints our line))
PROBES: dict[str, tuple[Callable[[str], str], str, str | None]] = {
    "unknown-key": (_edit("\ntrain:\n", "\ntrain:\n  epocs: 4\n"),
                    "error: params.yaml: train.epocs: unknown key (known keys: ", None),
    "milestone-beyond-epochs": (_edit("\n  epochs: 40 ", "\n  epochs: 2 "),
                                "error: params.yaml: train.milestones[0]: ", None),
    "yaml-syntax": (_edit("\ntrain:\n", "\ntrain:\n  epochs: [4\n"), "error: params.yaml:", "ERROR: "),
    "duplicate-key": (_edit("\ntrain:\n", "\ntrain:\n  lr: 0.2\n"),
                      "error: params.yaml:", "ERROR: "),
    "empty": (lambda text: "", "error: params.yaml: is empty", "ERROR: "),
    "server-down": (_edit('  tracking_uri: ""', "  tracking_uri: http://127.0.0.1:9"),
                    "error: track.tracking_uri: http://127.0.0.1:9: no MLflow server answers within 5 s", None),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC project: this repository's code and pipeline, stand-in outputs in its lock."""
    root = tmp_path_factory.mktemp("probe-project")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("vireid", "pipelines"):
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for folder in ("data/raw/SYSU-MM01", "data/shards"):
        (root / folder).mkdir(parents=True)
        (root / folder / "stand-in.txt").write_text(folder, encoding="utf-8")
    for out in OUTPUTS:
        (root / out).parent.mkdir(parents=True, exist_ok=True)
        (root / out).write_text(f"the last successful run's {out}\n", encoding="utf-8")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=root, env=ENV, check=True, timeout=120)
    subprocess.run([*dvc, "commit", "-f", "-q", "-d", "register"], cwd=root, env=ENV, check=True, timeout=300,
                   capture_output=True)
    assert "up to date" in _status(root)
    return root


def _status(root: Path) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", "status", "register"], cwd=root, env=ENV,
                          capture_output=True, text=True, timeout=300).stdout


#: every probe through ``vireid repro``; through plain ``dvc repro``, one a stage refuses (the
#: others refused by a stage take the same path: the train stage's first lines) and those DVC
#: refuses itself
CASES = [(probe, "vireid") for probe in sorted(PROBES)] + \
    [(probe, "dvc") for probe in ("unknown-key", "yaml-syntax", "duplicate-key", "empty")]


@pytest.mark.parametrize(("probe", "via"), CASES)
def test_probe(project: Path, tmp_path: Path, probe: str, via: str) -> None:
    edit, expected, dvc_refuses = PROBES[probe]
    root = tmp_path / "p"
    shutil.copytree(project, root, symlinks=True)
    before = {out: (root / out).read_bytes() for out in OUTPUTS}
    good = (root / "params.yaml").read_text(encoding="utf-8")
    (root / "params.yaml").write_text(edit(good), encoding="utf-8")
    cmd = [sys.executable, "-m", "vireid.cli", "repro"] if via == "vireid" else \
        [sys.executable, "-m", "dvc", "repro", "register"]
    proc = subprocess.run(cmd, cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "ERROR:"))]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if via == "vireid":  # params.yaml checked first, or the stage's line with DVC's own closing line left out
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert len(errors) == 1 and errors[0].startswith(expected), proc.stderr[-3000:]
    elif dvc_refuses is None:  # the stage ran, printed our line; DVC adds its line and exit code 255
        assert proc.returncode == 255, proc.stderr[-3000:]
        assert errors[0].startswith(expected) and len(errors) == 2, proc.stderr[-3000:]
        assert errors[1].startswith("ERROR: failed to reproduce 'train': failed to run: python -m pipelines.train, "
                                    "exited with 2")
    else:  # DVC refuses the file itself (docs/trust.md says so): its message, no stage run
        assert proc.returncode == 255 and errors and errors[0].startswith(dvc_refuses), proc.stderr[-3000:]
        assert "Running stage" not in proc.stdout
    assert {out: (root / out).read_bytes() for out in OUTPUTS} == before, f"{probe} via {via} lost outputs"
    if probe == "unknown-key":  # the typo fixed: nothing to rerun (DVC kept the locked outputs)
        (root / "params.yaml").write_text(good, encoding="utf-8")
        assert "up to date" in _status(root)
