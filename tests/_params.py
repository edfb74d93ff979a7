"""Parameters files for tests: every section (a parameters file must hold them all, as under
``dvc repro``) at the dataclass defaults, with some keys replaced."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, mapping by mapping."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def default_params() -> dict[str, Any]:
    """Every section at the defaults of :class:`vireid.config.Config`."""
    from vireid.config import Config, config_to_dict

    return config_to_dict(Config())


def params_file(path: Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """Write the default params with ``overrides`` merged in to ``path``."""
    path.write_text(yaml.safe_dump(merged(default_params(), overrides or {})), encoding="utf-8")
    return path
