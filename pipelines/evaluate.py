"""DVC stage ``evaluate``: the entry point ``python -m pipelines.evaluate``; the work is
:mod:`vireid.stages.evaluate` (options: ``--help``)."""

from __future__ import annotations

import sys

from vireid.errors import run_entry
from vireid.stages.evaluate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(run_entry(main))
