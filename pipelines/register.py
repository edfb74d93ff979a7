"""DVC stage ``register``: the entry point ``python -m pipelines.register``; the work is
:mod:`vireid.stages.register` (options: ``--help``)."""

from __future__ import annotations

import sys

from vireid.errors import run_entry
from vireid.stages.register import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(run_entry(main))
