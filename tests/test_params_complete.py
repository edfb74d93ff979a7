"""params.yaml holds every parameter (README): each field of the config dataclasses has a key."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from tests._params import REPO
from vireid.config import Config


def missing_keys(cls: type, params: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields of dataclass ``cls`` (recursively) that ``params`` lacks."""
    missing = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if not isinstance(params, dict) or f.name not in params:
            missing.append(key)
            continue
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            missing += missing_keys(type(value), params[f.name], f"{key}.")
    return missing


def test_missing_keys_names_nested_fields() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    del params["data"]["synth"]["seed"], params["eval"]["max_rank"]
    assert missing_keys(Config, params) == ["data.synth.seed", "eval.max_rank"]


def test_params_yaml_has_every_config_field() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    missing = missing_keys(Config, params)
    assert not missing, f"params.yaml lacks these config keys: {', '.join(missing)}"
