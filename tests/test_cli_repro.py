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


def test_repro_checks_the_project_roots_params_from_a_subfolder(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dvc repro run from a subfolder reads the project root's params.yaml; so does the check."""
    from tests._params import params_file

    (tmp_path / ".dvc").mkdir()
    params_file(tmp_path / "params.yaml")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    assert cli.repro_params("params.yaml", tmp_path / "sub" / "deeper") == tmp_path / "params.yaml"
    assert cli.repro_params("other.yaml", tmp_path / "sub") == tmp_path / "sub" / "other.yaml"
    monkeypatch.chdir(tmp_path / "sub")
    assert _argv([], monkeypatch) == [*DVC, "register"]
