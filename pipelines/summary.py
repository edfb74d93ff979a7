"""After ``make run``: the summary of the results: the entry point ``python -m pipelines.summary``; the work is
:mod:`vireid.stages.summary` (options: ``--help``)."""

from __future__ import annotations

import sys

from vireid.errors import run_entry
from vireid.stages.summary import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(run_entry(main))
