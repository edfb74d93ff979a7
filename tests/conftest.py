"""Settings and servers for the whole suite.

The environment `make test` exports is set here too (before any test imports Ray or starts
a process), so a test file run alone with ``uv run pytest tests/...`` behaves as under make.
One S3 server and one local Ray instance are shared by the tests of a pytest process that
ask for them (:func:`s3_server`, :func:`local_ray`): each starts in tens of seconds on the
2-core CI machine, and the tests keep apart by bucket and by run name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.infra.s3_server import SeaweedS3, running_s3

for _key, _value in (
        ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DVC_NO_ANALYTICS", "1"), ("RAY_USAGE_STATS_ENABLED", "0"),
        ("PYTHONUNBUFFERED", "1"),
        # Ray 2.60 would ship the whole working tree to every worker and start workers through
        # `uv run` when the driver runs under `uv run` (and hash `/` as the working directory of
        # a node started in `/`): keep the workers in this environment, as the Makefile does
        ("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0"),
        # Ray Train V2 starts a PreemptionWatcher actor per run (a Python process that imports
        # Ray, 6-8 CPU-seconds each on the 2-core CI machine); no test is about preemption
        ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
        # two pytest workers share the 2 cores: OpenMP threads that spin between regions take
        # turns with the other worker and run a step several times slower than passive ones
        # (docs/benchmarks.md, "Training on the CPU"); read when torch loads OpenMP
        ("OMP_WAIT_POLICY", "PASSIVE")):
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the session; each test module makes its own bucket
    (:func:`tests.infra.s3_server.make_bucket`)."""
    with running_s3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local Ray instance (2 CPUs, with the dashboard's State API that Ray Train's cleaner
    and Tune need) for the session: ``fit`` and ``run_search`` use a Ray this process
    initialised as it is (:func:`vireid.ray_session.ray_session`). Only tests of the
    ``xdist_group("ray")`` ask for it, so under `make test` it lives in one pytest worker."""
    import ray
    from ray._private import ray_constants

    from vireid.ray_session import start_local_ray

    with pytest.MonkeyPatch.context() as mp:
        # read when Ray is imported: in case something imported Ray before this conftest
        mp.setattr(ray_constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV", False)
        start_local_ray(num_cpus=2, object_store_mb=100)
        try:
            yield
        finally:
            ray.shutdown()
