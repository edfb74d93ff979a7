"""DVC stage ``train``: the entry point ``python -m pipelines.train``; the work is
:mod:`vireid.stages.train` (options: ``--help``)."""

from __future__ import annotations

import os
import sys

# Under `uv run`, Ray would otherwise ship the whole project directory, .venv included, to
# every worker. Must be set before ray is imported.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from vireid.errors import run_entry  # noqa: E402
from vireid.stages.train import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(run_entry(main))
