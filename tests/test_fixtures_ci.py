"""An absent reference fixture skips on a developer's machine and fails under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._fixtures import REPO, fixture_absent, fixtures_dir, under_ci

# one test that needs the eval fixtures through each of the three helpers
TARGETS = ["tests/evaluation/test_fixture_cases.py::test_every_case_is_covered",  # eval_cases + require
           "tests/data/test_regdb.py::test_reference_list_parsing"]  # the eval_fixtures fixture


def test_ci_detection() -> None:
    assert under_ci({"CI": "true"}) and under_ci({"CI": "1"})
    assert not under_ci({}) and not under_ci({"CI": ""}) and not under_ci({"CI": "false"})


def test_fixture_location_is_configurable(tmp_path: Path) -> None:
    assert fixtures_dir({"VIREID_FIXTURES": str(tmp_path)}) == tmp_path
    assert fixtures_dir({}) == REPO.parent / "shared" / "fixtures"


def test_absent_fixture_skips_locally_and_fails_under_ci(tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match="is absent"):
        fixture_absent(tmp_path / "x.json", {})
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        fixture_absent(tmp_path / "x.json", {"CI": "true"})


def _pytest(env_extra: dict[str, str], empty: Path, targets: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | env_extra | {"VIREID_FIXTURES": str(empty)}
    return subprocess.run([sys.executable, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_without_fixtures_fails_under_ci_only(tmp_path: Path) -> None:
    empty = tmp_path / "fixtures"
    empty.mkdir()
    local = _pytest({}, empty, TARGETS)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "2 skipped" in local.stdout
    for target in TARGETS:  # separately: the first one's collection error would stop the run
        ci = _pytest({"CI": "1"}, empty, [target])
        assert ci.returncode != 0, ci.stdout + ci.stderr
        assert "CI is set, so a missing fixture fails the run" in ci.stdout
