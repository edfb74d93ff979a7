"""Provenance of a pipeline run: the git commit of the repository handed in."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_commit(repo_root: str | os.PathLike[str]) -> str:
    """``HEAD`` of the git repository at ``repo_root`` with ``-dirty`` when tracked files
    changed; ``"unknown"`` outside a repository or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(Path(repo_root)), *args], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head
