"""Shared helpers of the pipeline entry points: params.yaml -> Config, logging."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import yaml

from vireid.config import Config, ConfigError, config_from_dict


def stage_parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser for a stage entry point, with the ``--params`` option every stage has."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="parameters file (default params.yaml)")
    return parser


def load_config(path: str | os.PathLike[str] = "params.yaml") -> Config:
    """Read ``path`` with ``yaml.safe_load`` and validate it into a :class:`Config`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found")
    with path.open(encoding="utf-8") as fh:
        params = yaml.safe_load(fh)
    return config_from_dict(params if params is not None else {})


def setup_logging(level: int = logging.INFO) -> None:
    """One-line timestamped log records on stderr (idempotent)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
