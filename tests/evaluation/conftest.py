"""Shared fixtures of the evaluation tests: the reference outputs in shared/fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

#: /work/shared/fixtures when the repo is /work/main (CI clones keep shared/ beside the repo).
FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
EVAL = FIXTURES / "eval"
OFFICIAL = FIXTURES / "sysu_official_split"


def require(path: Path) -> Path:
    """Skip (with the path in the reason) when a fixture file is absent."""
    if not path.exists():
        pytest.skip(f"fixture {path} is absent (expected shared/fixtures beside the repository)")
    return path


def eval_cases() -> list[dict[str, Any]]:
    """Cases of fixtures/eval/index.json; empty when the fixtures are absent."""
    index = EVAL / "index.json"
    if not index.exists():
        return []
    return json.loads(index.read_text())["cases"]
