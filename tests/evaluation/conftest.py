"""Shared fixtures of the evaluation tests: the reference outputs in shared/fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests._fixtures import fixture_absent, fixtures_dir, under_ci

#: shared/fixtures beside the repository, or $VIREID_FIXTURES (tests/_fixtures.py)
FIXTURES = fixtures_dir()
EVAL = FIXTURES / "eval"
OFFICIAL = FIXTURES / "sysu_official_split"


def require(path: Path) -> Path:
    """``path``; skip when the fixture file is absent (under CI: fail)."""
    if not path.exists():
        fixture_absent(path)
    return path


def eval_cases() -> list[dict[str, Any]]:
    """Cases of fixtures/eval/index.json; empty when the fixtures are absent (under CI: fail)."""
    index = EVAL / "index.json"
    if not index.exists():
        if under_ci():  # an empty parametrization would skip the cases silently
            fixture_absent(index)
        return []
    return json.loads(index.read_text())["cases"]
