"""What every stage's ``main`` shares: its parser, params.yaml -> Config, logging, cleanup.

Also :func:`run_entry` (expected errors as one line and exit code 2, see :mod:`vireid.errors`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from vireid.config import SECTIONS, Config, ConfigError, check_params, config_from_dict
from vireid.errors import run_entry
from vireid.io import environ_set, remove_stale_temporaries

__all__ = ["clean_stale_temporaries", "load_config", "run_entry", "setup_logging", "stage_parser",
           "weights_only_torch_load"]
FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def stage_parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser for a stage entry point, with the ``--params`` option every stage has."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="parameters file (default params.yaml)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an expected error too (also: VIREID_DEBUG=1)")
    return parser


class ParamsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` reading scalars as YAML 1.2 does (DVC's reader, ruamel.yaml, reads
    ``params.yaml`` that way, so both see the same values): ``1e-3`` and ``1.0e3`` are floats
    (YAML 1.1 makes them strings), only ``true``/``false`` are booleans (not ``yes``/``no``/
    ``on``/``off``); a key given twice in one mapping is refused (DVC refuses it too)."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if dup:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r}, first given on line {seen[key].line + 1}",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
ParamsLoader.add_implicit_resolver(  # YAML 1.2 floats YAML 1.1 lacks: an exponent without a dot or sign
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_config(path: str | os.PathLike[str] = "params.yaml") -> Config:
    """Read ``path`` with :class:`ParamsLoader` (YAML 1.2 scalars, duplicate keys refused)
    and validate it into a :class:`Config`.

    Every :class:`ConfigError` names the file first (``params.yaml: model.memory_size: ...``);
    a YAML syntax error is a ConfigError naming file, line and column. An empty file or a
    missing section is an error (as under ``dvc repro``); the cross-checks of
    :func:`vireid.config.check_params` (milestones and warm-up within ``train.epochs``) apply.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a parameters file")
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found")
    try:
        with path.open(encoding="utf-8") as fh:
            params = yaml.load(fh, Loader=ParamsLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable parameters file ({e})") from e
    if params is None:
        raise ConfigError(f"{path}: is empty (it needs every section: {', '.join(SECTIONS)}; "
                          "start from the repository's params.yaml)")
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got "
                          f"{type(params).__name__}")
    missing = [name for name in SECTIONS if name not in params]
    if missing:  # as dvc repro, which fails on a params key that dvc.yaml lists and the file lacks
        raise ConfigError(f"{path}: no {', '.join(missing)} section{'s' if len(missing) > 1 else ''} "
                          "(every section must be present, as dvc.yaml reads them; copy it from the "
                          "repository's params.yaml)")
    try:
        cfg = config_from_dict(params)
        check_params(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    return cfg


def setup_logging(level: int = logging.INFO) -> None:
    """One-line timestamped log records on stderr (idempotent)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def clean_stale_temporaries(*outputs: str | os.PathLike[str]) -> list[Path]:
    """Remove what a killed run of this stage left beside its ``outputs`` (``.<name>.*.tmp``,
    ``.<name>.old``: a whole shard set each for ``data/.shards.*.tmp``), logging each."""
    removed = remove_stale_temporaries(*outputs)
    for path in removed:
        logging.getLogger("vireid.stages").warning("removed %s, left by an interrupted run", path)
    return removed


@contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` for the block: every ``torch.load`` of the process
    -- and of the Ray workers it starts, which inherit the environment -- unpickles tensors and
    plain containers only, even where a library asks for more (torchvision's ImageNet weights
    download/cache: ``load_state_dict_from_url`` defaults to ``weights_only=False``)."""
    with environ_set(FORCE_WEIGHTS_ONLY, "1"):
        yield
