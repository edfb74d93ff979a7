"""CPU workers wait passively between OpenMP regions (vireid.ray_session.WORKER_ENV), and
that leaves the arithmetic of a training step exactly as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vireid.ray_session import WORKER_ENV

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

REPO = Path(__file__).resolve().parents[2]

# one step of the full method on a fixed batch with 2 threads; prints the losses and a
# gradient checksum (runs in a fresh process: OpenMP reads its wait policy when it loads)
STEP = """
import json, torch
torch.set_num_threads(2)
from tests.modeling.helpers import batch, make_task
task = make_task(num_classes=4, loss={"distill": True})
x, y, m = batch(p=4, k=2, seed=1)
losses, _ = task(x, y, m)
task.total(losses).backward()
grads = [p.grad.double().abs().sum().item() for p in task.parameters() if p.grad is not None]
print(json.dumps({"losses": {k: float(v) for k, v in losses.items()}, "grads": grads}))
"""


def _step(wait_policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    out = subprocess.run([sys.executable, "-c", STEP], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_passive_waiting_computes_the_same_step_bit_for_bit() -> None:
    spinning, passive = _step(None), _step("PASSIVE")
    assert passive == spinning  # same losses and gradients, exactly: only the waiting differs


# a stage's Ray (ray_session, local) started from a process without OMP_WAIT_POLICY: what its
# worker sees, and whether the session ended its Ray (a fresh process: the suite's own Ray and
# tests/conftest.py's environment would hide what ray_session itself does)
WORKER = """
import json, os, ray
from vireid.ray_session import ray_session

@ray.remote(num_cpus=1)
def policy():
    return os.environ.get("OMP_WAIT_POLICY")

with ray_session("", num_cpus=1, object_store_mb=80):
    seen = ray.get(policy.remote())
print(json.dumps({"driver": os.environ.get("OMP_WAIT_POLICY"), "worker": seen, "ended": not ray.is_initialized()}))
"""


def test_workers_of_a_stage_ray_start_with_the_worker_environment() -> None:
    assert WORKER_ENV == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", WORKER], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"driver": None, "worker": "PASSIVE", "ended": True}
