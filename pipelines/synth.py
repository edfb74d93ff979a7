"""DVC stage ``synth``: the entry point ``python -m pipelines.synth``; the work is
:mod:`vireid.stages.synth` (options: ``--help``)."""

from __future__ import annotations

import sys

from vireid.errors import run_entry
from vireid.stages.synth import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(run_entry(main))
