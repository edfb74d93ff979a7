"""``vireid repro``: the dvc command line it builds (no dvc is run)."""

from __future__ import annotations

import sys

import pytest

from vireid import cli

DVC = [sys.executable, "-m", "dvc", "repro"]


def _argv(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[list[str]] = []
    monkeypatch.setattr(cli, "run_dvc", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(["repro", *argv]) == 0
    assert len(calls) == 1
    return calls[0]


def test_repro_defaults_to_register_not_the_opt_in_tune_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _argv([], monkeypatch) == [*DVC, "register"]
    assert _argv(["-f"], monkeypatch) == [*DVC, "-f", "register"]


def test_repro_passes_other_targets_and_dvc_options(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _argv(["tune"], monkeypatch) == [*DVC, "tune"]
    assert _argv(["--force", "train", "evaluate"], monkeypatch) == [*DVC, "--force", "train", "evaluate"]
    assert _argv(["-P"], monkeypatch) == [*DVC, "-P"]  # every pipeline, as asked


def test_repro_argv_function() -> None:
    assert cli.repro_argv([], []) == [*DVC, "register"]
    assert cli.repro_argv(["tune"], ["--dry"]) == [*DVC, "--dry", "tune"]
