"""Where the reference fixtures are, and what an absent one does: a skip on a developer's
machine, a failure under CI (environment variable ``CI`` set), so a CI run without
``shared/fixtures`` cannot pass with the reference tests silently skipped.

The location is ``shared/fixtures`` beside the repository (``/work/shared/fixtures`` for
``/work/main``; CI clones keep ``shared/`` beside the repo), or ``$VIREID_FIXTURES``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]


def fixtures_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$VIREID_FIXTURES`` when set, else ``shared/fixtures`` beside the repository."""
    env = os.environ if env is None else env
    return Path(env["VIREID_FIXTURES"]) if env.get("VIREID_FIXTURES") else REPO.parent / "shared" / "fixtures"


def under_ci(env: Mapping[str, str] | None = None) -> bool:
    """True when ``CI`` is set to anything but empty, ``0``, ``false`` or ``no``."""
    env = os.environ if env is None else env
    return env.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def fixture_absent(path: Path, env: Mapping[str, str] | None = None) -> NoReturn:
    """Skip for an absent fixture ``path``; under CI fail instead (``pytest.fail``)."""
    reason = (f"fixture {path} is absent (expected shared/fixtures beside the repository, "
              f"or $VIREID_FIXTURES)")
    if under_ci(env):
        pytest.fail(f"{reason}; CI is set, so a missing fixture fails the run", pytrace=False)
    pytest.skip(reason)
