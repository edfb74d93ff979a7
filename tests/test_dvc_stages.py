"""Each dvc.yaml stage lists exactly what it reads: its params are the config keys the stage's
code reads, its code deps are the files it imports (README promises both)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests._params import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
STAGES = sorted(DVC)


_CLOSURE = """
import ast, importlib, json, sys
from pathlib import Path

def named(path):
    names = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("vireid", "pipelines"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] in ("vireid", "pipelines"))
    return names

todo, seen = {sys.argv[1]}, set()
while todo:
    name = todo.pop()
    seen.add(name)
    module = importlib.import_module(name)
    for loaded in list(sys.modules.values()):  # what importing it loaded, and the imports inside its functions
        f = getattr(loaded, "__file__", None) or ""
        if loaded.__name__.split(".")[0] in ("vireid", "pipelines") and f.endswith(".py"):
            todo |= named(f) - seen
print(json.dumps(sorted(getattr(m, "__file__", None) or "" for m in list(sys.modules.values()))))
"""


def imported_files(stage: str) -> set[str]:
    """Repository files the stage's entry point loads, also through the imports inside
    functions (which run only when the stage does), followed through every project module."""
    out = subprocess.run([sys.executable, "-c", _CLOSURE, f"pipelines.{stage}"], cwd=REPO, capture_output=True,
                         text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    files = json.loads(out.stdout.splitlines()[-1])
    return {str(Path(f).resolve().relative_to(REPO)) for f in files
            if f and Path(f).resolve().is_relative_to(REPO) and "/.venv/" not in f
            and not Path(f).resolve().relative_to(REPO).parts[0].startswith("tests")}


def _code_deps(stage: str) -> list[str]:
    return [d for d in DVC[stage]["deps"] if d.endswith(".py") or d.startswith("vireid")]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_exactly_the_imported_files(stage: str) -> None:
    files = imported_files(stage)
    deps = _code_deps(stage)
    missing = sorted(f for f in files if not _covered(f, deps) and not f.endswith("__init__.py")
                     and f.startswith(("vireid/", "pipelines/")))
    assert not missing, f"dvc.yaml stage {stage} imports but does not depend on: {missing}"
    stale = sorted(d for d in deps if not any(_covered(f, [d]) for f in files))
    assert not stale, f"dvc.yaml stage {stage} depends on files it does not import: {stale}"


# ---------------------------------------------------------------------------- params


def _section_of() -> dict[type, str]:
    """Config dataclass -> its dotted place in params.yaml."""
    from vireid.config import Config

    places: dict[type, str] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            value = getattr(cls(), f.name)
            if dataclasses.is_dataclass(value):
                places[type(value)] = f"{prefix}{f.name}"
                walk(type(value), f"{prefix}{f.name}.")

    walk(Config, "")
    return places


class ReadKeys:
    """Records ``section.key`` of every read of a field of the parameters' config while active (not the reads of
    validation, ``load_config``/``config_from_dict``, nor of ``config_to_dict``, which records
    the whole config for MLflow rather than using it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import vireid.config as config

        self.keys: set[str] = set()
        self.paused = 0
        self.watched: set[int] = set()  # ids of the parameters' config objects (not, e.g., a model file's)
        places = _section_of()
        for cls, place in places.items():
            names = {f.name for f in dataclasses.fields(cls)}
            original = cls.__getattribute__

            def getter(obj: Any, name: str, _orig=original, _names=names, _place=place) -> Any:
                if name in _names and not self.paused and id(obj) in self.watched:
                    self.keys.add(f"{_place}.{name}")
                return _orig(obj, name)

            monkeypatch.setattr(cls, "__getattribute__", getter)
        import vireid.stages.entry as entry

        # reading every key to validate or to record the whole config is not using it
        for owner, name in ((config, "config_to_dict"), (config, "config_from_dict")):
            self._pause_in(getattr(owner, name), monkeypatch)
        self._pause_in(entry.load_config, monkeypatch, watch=True)

    def watch(self, cfg: Any) -> Any:
        """Record the reads of ``cfg`` (a Config read from a parameters file) and its sections."""
        self.paused += 1
        try:
            stack = [cfg]
            while stack:
                obj = stack.pop()
                self.watched.add(id(obj))
                stack.extend(getattr(obj, f.name) for f in dataclasses.fields(obj)
                             if dataclasses.is_dataclass(getattr(obj, f.name)))
        finally:
            self.paused -= 1
        return cfg

    def _pause_in(self, function: Any, monkeypatch: pytest.MonkeyPatch, watch: bool = False) -> None:
        def paused(*args: Any, **kwargs: Any) -> Any:
            self.paused += 1
            try:
                result = function(*args, **kwargs)
            finally:
                self.paused -= 1
            return self.watch(result) if watch else result

        for module in list(sys.modules.values()):
            if getattr(module, function.__name__, None) is function:
                monkeypatch.setattr(module, function.__name__, paused)


def _listed(stage: str) -> list[str]:
    return list(DVC[stage]["params"])


def _covers(key: str, listed: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in listed)


def check_reads(stage: str, read: set[str], only_other_branches: set[str] = frozenset()) -> None:
    listed = _listed(stage)
    unlisted = sorted(k for k in read if not _covers(k, listed))
    assert not unlisted, f"stage {stage} reads params dvc.yaml does not list: {unlisted}"
    unread = sorted(p for p in listed if not any(_covers(k, [p]) for k in read) and p not in only_other_branches)
    assert not unread, f"dvc.yaml lists params stage {stage} does not read: {unread}"


def test_tune_lists_what_its_trials_read() -> None:
    """A tune trial is the train stage's run with S, T and the epochs replaced, plus the search:
    its params are the train stage's and the tune section (the train stage's are checked by
    tests/training/test_dvc_params.py)."""
    assert set(_listed("tune")) == set(_listed("train")) | {"tune"}


# ---------------------------------------------------------------------------- plots


def _plotted(content: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """The series of one rendered DVC plot: y column -> [(epoch, value)] for non-empty values."""
    values = content["data"]["values"]
    single = None
    if not any("field" in v for v in values):  # one y column: named in the layer encoding
        single = next(layer["encoding"]["y"]["field"] for layer in content["layer"]
                      if "y" in layer.get("encoding", {}))
    series: dict[str, list[tuple[int, float]]] = {}
    for v in values:
        name = v.get("field", single)
        value = v["dvc_inferred_y_value"] if "dvc_inferred_y_value" in v else v[name]
        if value != "":
            series.setdefault(name, []).append((int(v["epoch"]), float(value)))
    return series


def test_training_curves_are_dvc_plots(tmp_path: Path) -> None:
    """`dvc plots show/diff` draws val_mAP and every loss term of history.csv per epoch, so
    two experiments' training curves are compared, not only their CMC."""
    from vireid.config import LossWeights
    from vireid.training.ray_train import write_history_csv

    terms = [f.name for f in dataclasses.fields(LossWeights)]  # the task's loss term names
    history = [{"epoch": e, "attempt": 0, "lr_new": 0.1, **{t: 5.0 - e - i / 10 for i, t in enumerate(terms)},
                "loss": 20.0 - e, "seconds": 1.0, **({"val_mAP": 0.1 * e} if e % 2 == 0 else {})}
               for e in (1, 2, 3, 4)]
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text(encoding="utf-8"), encoding="utf-8")
    write_history_csv(tmp_path / "outputs/train/history.csv", history)
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "DVC_NO_ANALYTICS": "1",
           "HOME": str(tmp_path)}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    out = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    shown = json.loads(out.stdout)
    errors = [e for e in shown.get("errors", []) if "history" in json.dumps(e) or e["name"].startswith("train")]
    assert not errors, errors
    series: dict[str, list[tuple[int, float]]] = {}
    for name, plots in shown["data"].items():
        for plot in plots:
            if plot["type"] == "vega" and name != "outputs/eval/cmc.csv":
                series |= _plotted(plot["content"])
    assert series["val_mAP"] == [(2, pytest.approx(0.2)), (4, pytest.approx(0.4))]
    assert series["loss"] == [(e, 20.0 - e) for e in (1, 2, 3, 4)]
    for i, term in enumerate(terms):
        assert series[term] == [(e, pytest.approx(5.0 - e - i / 10)) for e in (1, 2, 3, 4)], term
