"""DVC stage ``prepare``: the entry point ``python -m pipelines.prepare``; the work is
:mod:`vireid.stages.prepare` (options: ``--help``)."""

from __future__ import annotations

import sys

from vireid.errors import run_entry
from vireid.stages.prepare import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(run_entry(main))
