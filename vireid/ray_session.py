"""Which Ray a stage runs on (``train.ray_address``) and where its runs persist (``train.storage``).

One code path from laptop to cluster: with an address, a stage joins that cluster without
resource arguments (the cluster's nodes say what they have); without one it starts its own
local instance, never an instance some earlier ``ray start`` left recorded in Ray's temp
folder. Storage is a local folder (made absolute, as Ray requires) or a URI (``s3://``,
``gs://``; credentials and endpoint from the standard environment variables) that every
node reads and writes.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ray

from vireid.config import ConfigError

log = logging.getLogger(__name__)

#: Environment of every Ray worker process a stage starts (Ray's job ``runtime_env``).
#: ``OMP_WAIT_POLICY=PASSIVE``: an OpenMP thread that has finished its share of an operator
#: sleeps instead of spinning for the next one. A training worker's threads share their cores
#: with Ray's own processes, the driver and the loader; spinning threads then take turns with
#: them at every parallel region, and a step on 2 cores ran 5-8x slower than on 1 thread on a
#: loaded machine (docs/benchmarks.md, "Training on the CPU"). It must be in the environment
#: before the process loads OpenMP, hence here and not in the training code.
WORKER_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def is_uri(storage: str) -> bool:
    """Whether ``storage`` names an object store (``scheme://...``) rather than a local path."""
    return "://" in storage


def storage_location(storage: str, base: str | os.PathLike[str], *parts: str) -> str:
    """``storage``/``parts``: a URI as it is, a relative local path resolved against ``base``."""
    if is_uri(storage):
        return "/".join([storage.rstrip("/"), *parts])
    root = Path(storage) if Path(storage).is_absolute() else Path(base) / storage
    return str(root.joinpath(*parts).resolve())


def ray_storage(location: str, environ: Mapping[str, str]) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Ray's ``RunConfig`` from a storage location.

    A local folder or a ``gs://`` URI: Ray's own resolution (``None`` filesystem). An
    ``s3://bucket/prefix`` URI: a pyarrow S3 filesystem built from the standard variables in
    ``environ`` (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, and
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an S3-compatible server, which
    pyarrow does not read itself), with the path ``bucket/prefix`` as Ray wants it then.
    """
    parts = urlsplit(location)
    if parts.scheme != "s3":
        return location, None
    import pyarrow.fs

    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or ""
    kwargs: dict[str, Any] = {}
    if endpoint:
        e = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=e.netloc, scheme=e.scheme or "https")
    if environ.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(access_key=environ["AWS_ACCESS_KEY_ID"], secret_key=environ.get("AWS_SECRET_ACCESS_KEY", ""),
                      session_token=environ.get("AWS_SESSION_TOKEN") or None)
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return f"{parts.netloc}{parts.path}".rstrip("/"), pyarrow.fs.S3FileSystem(**kwargs)


def local_gpus(use_gpu: bool, num_workers: int, found: int, gpus_per_trial: float = 0.0) -> int:
    """GPUs a new local Ray instance offers: none without ``train.use_gpu``, else the
    ``found`` GPUs of this machine (the caller counts them); fewer than one run needs is a
    ConfigError: ``train.num_workers`` (one GPU per worker), or for a Tune trial with
    ``tune.gpus_per_trial`` set, that many rounded up (a fraction shares a GPU)."""
    if not use_gpu:
        return 0
    if gpus_per_trial:
        need = math.ceil(gpus_per_trial)
        if found < need:
            raise ConfigError(f"tune.gpus_per_trial: {gpus_per_trial:g} needs {need} GPU(s) for one trial, "
                              f"this machine has {found}; lower it, set train.use_gpu: false, or join a "
                              "cluster with train.ray_address")
        return found
    if found < num_workers:
        raise ConfigError(f"train.use_gpu: true with train.num_workers: {num_workers} needs {num_workers} "
                          f"GPUs (one per worker), this machine has {found}; lower train.num_workers, "
                          "set train.use_gpu: false, or join a cluster with train.ray_address")
    return found


class RayStartError(RuntimeError):
    """Ray did not start (a local instance timed out under load) or the cluster of
    ``train.ray_address`` could not be joined."""


def start_local_ray(num_cpus: int, num_gpus: int = 0, object_store_mb: int = 256) -> str:
    """Start a local Ray whose own processes know its address; return the address.

    Ray Train's detached ``PlacementGroupCleaner`` asks the State API (served by the
    dashboard, hence ``include_dashboard=True``) whether a run's controller is gone: without
    it every run logs "Failed to query Ray Train Controller actor state", and a Tune trial's
    placement group (freed by that cleaner when the trial's actor is killed) leaks, so the
    next trial waits for CPUs forever. The State API finds the cluster through
    ``RAY_ADDRESS`` or, without it, by looking for running GCS processes, which fails when
    another Ray instance runs on the machine; so the GCS port is chosen here
    (``RAY_GCS_SERVER_PORT``) and ``RAY_ADDRESS`` set while Ray starts, for its processes to
    inherit. This process's environment is restored afterwards.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port = int(sock.getsockname()[1])
    address = f"{ray.util.get_node_ip_address()}:{port}"
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    os.environ.update(RAY_ADDRESS=address, RAY_GCS_SERVER_PORT=str(port))
    try:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=True,
                 dashboard_host="127.0.0.1", object_store_memory=object_store_mb * 1024 * 1024,
                 log_to_driver=True, runtime_env={"env_vars": dict(WORKER_ENV)})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return address


@contextmanager
def ray_session(address: str, *, num_cpus: int, num_gpus: int = 0,
                object_store_mb: int = 256) -> Iterator[None]:
    """Ray for the block: the cluster at ``address`` (joined without resource arguments) or,
    with ``address`` empty, a new local instance of ``num_cpus``/``num_gpus``; either way its
    workers start with :data:`WORKER_ENV`. A Ray this process initialised before is used as it
    is; what the block started or joined it ends.
    """
    if ray.is_initialized():
        yield
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": dict(WORKER_ENV)})
        else:
            start_local_ray(num_cpus, num_gpus, object_store_mb)
    except Exception as e:  # Ray's start-up failures are plain Exceptions/ConnectionErrors
        ray.shutdown()  # what did start
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if address:
            raise RayStartError(f"train.ray_address: could not join the Ray cluster at {address} ({first}) "
                                "(check the address and that the cluster is up)") from e
        raise RayStartError(f"Ray: the local instance did not start ({first}) (the machine may be "
                            "overloaded: rerun when it is quieter, or lower train.num_workers / "
                            "cpus_per_worker; Ray's logs: /tmp/ray/session_latest/logs)") from e
    if address:
        log.info("joined the Ray cluster at %s (%d nodes)", address,
                 sum(1 for n in ray.nodes() if n.get("Alive")))
    try:
        yield
    finally:
        ray.shutdown()


def alive_nodes() -> int:
    """Nodes of the connected Ray cluster that are alive."""
    return sum(1 for n in ray.nodes() if n.get("Alive"))
