"""Settings for the whole suite (environment only: set before any test starts Ray)."""

from __future__ import annotations

import os

# Ray Train V2 starts a PreemptionWatcher actor per run (a Python process that imports Ray,
# 6-8 CPU-seconds each on the 2-core CI machine); no test is about spot-instance preemption.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# two pytest workers share the 2 cores: OpenMP threads that spin between regions take turns
# with the other worker and run a step several times slower than passive ones
# (docs/benchmarks.md, "Training on the CPU"); read when torch loads, so set here
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
