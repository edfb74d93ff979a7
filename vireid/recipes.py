"""Recipes: named sets of ``params.yaml`` values, kept as data under ``recipes/<name>.yaml``.

A recipe is a YAML mapping shaped like ``params.yaml`` that holds only the keys it sets
(``recipes/sysu_agw.yaml``: AGW's recipe on SYSU-MM01; ``recipes/cpu_demo.yaml``: the embedded
CPU default). :func:`apply_recipe` writes its values into a parameters file and returns what
changed; the file's comments, key order and flow-style lists are kept (a ruamel.yaml round
trip), the result is validated as a whole (:func:`vireid.config.config_from_dict` and
:func:`vireid.config.check_params`) before anything is written, and the write is atomic.
:func:`set_params` does the same for any ``{dotted key: value}`` (``vireid tune apply``).

A key that is not a parameter (not a field of :class:`vireid.config.Config`) or a recipe
that does not exist is a :class:`~vireid.config.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from vireid.config import Config, ConfigError, check_params, config_from_dict
from vireid.io import atomic_write_text

RECIPE_SUFFIX = ".yaml"


@dataclass(frozen=True)
class Change:
    """One key whose value a recipe changed (``old`` -> ``new``, as plain YAML values)."""

    key: str
    old: Any
    new: Any

    def line(self) -> str:
        """``key: old -> new`` with the values in YAML flow style."""
        return f"{self.key}: {_flow(self.old)} -> {_flow(self.new)}"


def _flow(value: Any) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True, width=4096).strip().removesuffix("...").strip()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    for kind in (bool, int, float, str):  # ruamel's scalar subclasses -> the plain type
        if isinstance(value, kind):
            return kind(value)
    return value


def recipe_names(folder: str | os.PathLike[str]) -> list[str]:
    """The recipes in ``folder``: ``<name>.yaml`` files, sorted."""
    folder = Path(folder)
    return sorted(p.name.removesuffix(RECIPE_SUFFIX) for p in folder.glob(f"*{RECIPE_SUFFIX}")
                  if p.is_file()) if folder.is_dir() else []


def recipe_path(folder: str | os.PathLike[str], name: str) -> Path:
    """``folder/<name>.yaml``; a name that is not one of :func:`recipe_names` is a ConfigError."""
    known = recipe_names(folder)
    if name not in known:
        raise ConfigError(f"{Path(folder) / (name + RECIPE_SUFFIX)}: no such recipe "
                          f"(known: {', '.join(known) or 'none'})")
    return Path(folder) / f"{name}{RECIPE_SUFFIX}"


def _parameter_keys(cls: type = Config, prefix: str = "") -> dict[str, bool]:
    """Dotted name of every parameter -> whether it is a section (a nested dataclass)."""
    keys: dict[str, bool] = {}
    defaults = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        nested = dataclasses.is_dataclass(getattr(defaults, f.name))
        keys[key] = nested
        if nested:
            keys |= _parameter_keys(type(getattr(defaults, f.name)), f"{key}.")
    return keys


def flatten(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``{"train": {"epochs": 80}}`` -> ``{"train.epochs": 80}``: nested mappings are followed
    down to the parameters (a section's mapping is followed; a parameter's value is kept
    whole). A key that is no parameter is a ConfigError naming ``source`` and the key."""
    known = _parameter_keys()
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, Mapping):
            raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: must be a mapping of "
                              f"keys, got {node!r}")
        for name, value in node.items():
            key = f"{prefix}{name}"
            if key not in known:
                raise ConfigError(f"{source}: {key}: unknown key (not a parameter of params.yaml; "
                                  "see vireid/config.py)")
            if known[key] and isinstance(value, Mapping):
                walk(value, f"{key}.")
            else:
                flat[key] = value

    walk(values, "")
    if not flat:
        raise ConfigError(f"{source}: sets no parameter (a recipe is a mapping like params.yaml)")
    return flat


def load_recipe(folder: str | os.PathLike[str], name: str) -> tuple[Path, dict[str, Any]]:
    """The recipe ``name`` of ``folder``: its path and its values as ``{dotted key: value}``."""
    path = recipe_path(folder, name)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from e
    return path, flatten(values if values is not None else {}, str(path))


def _round_trip() -> YAML:
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # never re-wrap a long line or comment
    return rt


def _styled(old: Any, new: Any) -> Any:
    """``new`` in the style of the value it replaces (a flow-style list stays one line)."""
    if isinstance(new, (list, tuple)):
        seq = CommentedSeq(_styled(None, v) for v in new)
        if isinstance(old, CommentedSeq) and old.fa.flow_style():
            seq.fa.set_flow_style()
        return seq
    if isinstance(new, Mapping):
        mapping = CommentedMap((k, _styled(None, v)) for k, v in new.items())
        if isinstance(old, CommentedMap) and old.fa.flow_style():
            mapping.fa.set_flow_style()
        return mapping
    return new


def set_params(params_path: str | os.PathLike[str], values: Mapping[str, Any], source: str) -> list[Change]:
    """Write ``values`` (``{dotted key: value}``) into the parameters file ``params_path``.

    Comments, order and styles of the file are kept; the new file must load as a valid
    :class:`~vireid.config.Config` (else a ConfigError naming ``source``, and the file is left
    as it was); it replaces the old one atomically, and only when something changed. Returns
    the changes, in the order of ``values``.
    """
    params_path = Path(params_path)
    rt = _round_trip()
    try:
        text = params_path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{params_path}: parameters file not found") from e
    doc = rt.load(text)
    if not isinstance(doc, CommentedMap):
        raise ConfigError(f"{params_path}: the top level must be a mapping of sections")
    changes: list[Change] = []
    for key, new in values.items():
        *parents, leaf = key.split(".")
        node = doc
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping) or leaf not in node:
            raise ConfigError(f"{params_path}: {key}: missing (set by {source}; every parameter must "
                              "be in the file: copy it from the repository's params.yaml)")
        old = node[leaf]
        if _plain(old) != _plain(new) or type(_plain(old)) is not type(_plain(new)):
            changes.append(Change(key, _plain(old), _plain(new)))
            node[leaf] = _styled(old, new)
    if not changes:
        return changes
    buf = io.StringIO()
    rt.dump(doc, buf)
    try:
        cfg = config_from_dict(yaml.safe_load(buf.getvalue()))
        check_params(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e} (after writing it into {params_path}; nothing written)") from e
    atomic_write_text(params_path, buf.getvalue())
    return changes


def apply_recipe(params_path: str | os.PathLike[str], folder: str | os.PathLike[str],
                 name: str) -> tuple[Path, list[Change]]:
    """Apply recipe ``name`` of ``folder`` to ``params_path`` (:func:`set_params`); returns the
    recipe's path and the changes."""
    path, values = load_recipe(folder, name)
    return path, set_params(params_path, values, str(path))


TUNED_KEYS: tuple[str, ...] = ("model.memory_size", "loss.temperature")  # what the tune stage searches


def apply_tuned(params_path: str | os.PathLike[str], best_path: str | os.PathLike[str]) -> list[Change]:
    """Write the best trial's S and T (the tune stage's ``best_params.yaml``) into the
    parameters file (:func:`set_params`); returns the changes."""
    best_path = Path(best_path)
    if not best_path.is_file():
        raise ConfigError(f"{best_path}: no tune result (run the tune stage first: uv run vireid repro tune)")
    try:
        values = yaml.safe_load(best_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{best_path}: not valid YAML ({getattr(e, 'problem', None) or e})") from e
    flat = flatten(values if values is not None else {}, str(best_path))
    if sorted(flat) != sorted(TUNED_KEYS):
        raise ConfigError(f"{best_path}: holds {', '.join(sorted(flat))}, not the tuned "
                          f"{', '.join(TUNED_KEYS)} (a tune stage's best_params.yaml)")
    return set_params(params_path, flat, str(best_path))
