"""The tune stage on a real two-node Ray cluster whose nodes do not share a filesystem.

As in test_cluster_pipeline: the second node runs in its own mount namespace (``unshare -m``)
with an empty tmpfs over the repository and over every folder pytest made, the stage keeps
the staged shards, the trials' checkpoints and the Tune state on a real S3 server
(``train.storage: s3://...``) and logs to a real ``mlflow server``. The stage is run as a
user runs it: the test's project is a git + DVC repository with the code, ``dvc.yaml`` and a
``params.yaml``; ``dvc repro prepare`` makes the shards (synth, prepare), then ``dvc repro
tune`` runs ``python -m pipelines.tune``, which joins the cluster by ``train.ray_address``.

Placement: each node offers 3 CPUs, a trial's driver reserves 2 (``tune.driver_cpus: 2``) and
its one Train worker 1 (``tune.cpus_per_trial: 1``), so two trials at once
(``tune.max_concurrent: 2``) can only run with one driver and one worker on each node: the
test asserts that two trials overlapped in time with their drivers and their workers on
different nodes (the node ids each trial's MLflow run records, tags ``vireid.trial_nodes``
and ``vireid.ray_nodes``).

The second test adds the faults: a node lost while a trial runs on it, then the stage's
driver SIGKILLed mid-search and the stage run again (see its docstring).

Run alone (needs root for ``unshare``; skipped otherwise)::

    uv run --frozen pytest -p no:cacheprovider tests/infra/test_cluster_tune.py            # both
    uv run --frozen pytest -p no:cacheprovider tests/infra/test_cluster_tune.py -k across  # the first

``make test`` runs the first; the second is marked ``long`` and runs under ``make
test-long`` (or the command above). The first takes about 5 min on a 2-core machine (4 trials of at most 3 epochs of the tiny
model, two at a time; the cluster, the S3 server and the MLflow server start in about a
minute); the second about 10 min (two searches of 3 trials, one interrupted twice).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests._params import REPO
from tests.infra.isolated_nodes import (
    SHARD_CACHE,
    assert_isolated,
    isolation,
    listing,
    skip_unless_root,
    stage_env,
)
from tests.infra.raycluster_local import LocalRayCluster
from tests.infra.s3_server import SeaweedS3, make_bucket
from tests.tuning.conftest import SYNTH, tiny_config
from vireid.config import config_to_dict, replace
from vireid.data.shards import ShardSet
from vireid.data.staging import shard_key
from vireid.ray_session import ray_storage
from vireid.tracking.tags import TAG_RAY_NODES, TAG_TRIAL_NODES
from vireid.tuning.space import experiment_name, rung_epochs
from vireid.tuning.tracking import PARENT_TAG, TAG_EXPERIMENT, TAG_ROLE, TAG_TRIAL

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

BUCKET = "vireid-cluster-tune"
TRIALS = 4
#: the stage's command without DVC, for a search with another parameters file (the reference)
STAGE = [sys.executable, "-m", "pipelines.tune", "--shards", "data/shards"]
#: the project's synthetic tree, relative: the synth stage's output inside the repository
RAW = Path("data/raw/SYSU-MM01")


def _dvc_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a ``dvc`` command: this interpreter's folder first on PATH (the stages'
    ``python``), no analytics, a git identity."""
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.environ['PATH'])}",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}


def _dvc(project: Path, *args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``dvc <args>`` in ``project`` (output captured; the caller checks the return code)."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=_dvc_env(env),
                          capture_output=True, text=True, timeout=timeout)


def _dvc_project(project: Path, cfg) -> Path:
    """A user's checkout: the code, ``dvc.yaml`` and ``cfg`` as ``params.yaml`` in a git + DVC
    repository, its shards made by ``dvc repro prepare``. Returns the shard directory."""
    for name in ("pipelines", "vireid"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    (project / "params.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)), encoding="utf-8")
    env = dict(os.environ)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=project, env=_dvc_env(env), check=True, capture_output=True, timeout=120)
    proc = _dvc(project, "repro", "prepare", env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return project / "data" / "shards"


@pytest.fixture
def s3(s3_server: SeaweedS3) -> SeaweedS3:
    """The session's S3 server (tests/conftest.py) with this test's bucket."""
    make_bucket(s3_server, BUCKET)
    return s3_server


def _two_nodes(cluster: LocalRayCluster, s3: SeaweedS3, mlflow_server: str, tmp_path: Path,
               tmp_path_factory: pytest.TempPathFactory, **tune: object):
    """A user's project (:func:`_dvc_project`) with the tiny search of tests/tuning with
    ``tune`` (two trials at a time, a trial's driver 2 CPUs and its worker 1; storage in the
    bucket, the MLflow server), and a cluster of the head and one isolated node of 3 CPUs
    each. Returns ``(project, cfg, shards, node ids, (hide, keep))``."""
    project = tmp_path / "project"
    cfg = tiny_config(RAW, max_concurrent=2, epochs=3, cpus_per_trial=1, driver_cpus=2.0, **tune)
    assert cfg.data.synth == SYNTH
    cfg = replace(cfg, train={"ray_address": cluster.address, "storage": f"s3://{BUCKET}/team", "max_failures": 2},
                  track={"tracking_uri": mlflow_server, "experiment": "tune-cluster"})
    shards = _dvc_project(project, cfg)
    hide, keep = isolation(cluster, tmp_path_factory)
    cluster.start_head({"node_head": 1}, num_cpus=3, dashboard=True)
    cluster.add_isolated_node({"node_worker": 1}, hide=hide, keep=keep, num_cpus=3)
    nodes = {n["NodeID"] for n in cluster.wait_for_nodes(2)}
    assert len(nodes) == 2
    # the isolated node sees neither the project nor the head's copy of the repository
    assert_isolated(cluster, [project / "params.yaml", shards / "manifest.json", REPO / "params.yaml"])
    return project, cfg, shards, nodes, (hide, keep)


def _interval(c, run) -> tuple[int, int]:
    """When a trial trained: from its run's creation to its last epoch's metric, in ms (not
    the run's end time: the search's end closes the runs of the trials ASHA stopped)."""
    last = max(m.timestamp for m in c.get_metric_history(run.info.run_id, "val_mAP"))
    return run.info.start_time, last


@pytest.mark.timeout(1500)
def test_tune_stage_across_nodes_two_trials_at_once_state_on_s3(
        s3: SeaweedS3, mlflow_server: str, cluster: LocalRayCluster, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    skip_unless_root()
    project, cfg, shards, nodes, _ = _two_nodes(cluster, s3, mlflow_server, tmp_path, tmp_path_factory,
                                                num_samples=TRIALS, grace_period=1, reduction_factor=2)
    _, fs = ray_storage(f"s3://{BUCKET}", s3.environ())  # the library's S3 filesystem, to look in the bucket

    key = shard_key(shards)
    shutil.rmtree(SHARD_CACHE / key, ignore_errors=True)  # the head copies the set like any node
    # RAY_DEDUP_LOGS=0: every worker's "copied shards" line reaches the driver's output
    env = {**stage_env(cluster, s3), "RAY_DEDUP_LOGS": "0"}
    try:
        proc = _dvc(project, "repro", "tune", env=env, timeout=1200)
    finally:
        shutil.rmtree(SHARD_CACHE / key, ignore_errors=True)  # the head node's copy
    output = proc.stdout + proc.stderr
    (tmp_path / "tune.log").write_text(output)
    assert proc.returncode == 0, output[-6000:]
    assert "Running stage 'tune'" in output and "Running stage 'prepare'" not in output, output[-3000:]
    # DVC recorded the stage: its outputs are in dvc.lock and the pipeline is up to date
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert {o["path"] for o in lock["stages"]["tune"]["outs"]} == {
        "outputs/tune/best_params.yaml", "outputs/tune/summary.json", "outputs/tune/tune.png"}
    status = _dvc(project, "status", "tune", env=env)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr

    out = project / "outputs" / "tune"
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["trial_id"]: r for r in summary["trials"]}
    assert summary["num_trials"] == len(rows) == TRIALS and summary["num_errored"] == 0, summary
    # ASHA stopped at least one trial at a rung, and let at least one reach max_t
    assert summary["num_early_stopped"] >= 1, summary
    assert all(r["epochs_run"] in rung_epochs(cfg) for r in rows.values() if r["early_stopped"])
    assert any(r["completed"] and r["epochs_run"] == cfg.tune.epochs for r in rows.values())
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best == {"model": {"memory_size": summary["best"]["memory_size"]},
                    "loss": {"temperature": summary["best"]["temperature"]}}

    # the Tune state and every trial's checkpoints are in the bucket, under train.storage
    name = summary["experiment"]
    assert summary["experiment_path"] == f"{BUCKET}/team/tune/{name}", summary["experiment_path"]
    objects = listing(fs, f"{BUCKET}/team/tune/{name}")
    assert any(re.fullmatch(rf"{BUCKET}/team/tune/{name}/experiment_state-.*\.json", p) for p in objects), objects
    assert f"{BUCKET}/team/tune/{name}/tuner.pkl" in objects, objects
    for trial_id in rows:
        ckpts = [p for p in objects if p.startswith(f"{BUCKET}/team/tune/{name}/train/{trial_id}/checkpoint_")
                 and p.endswith("/train_state.pt")]
        assert len(ckpts) == 1, (trial_id, ckpts)  # num_to_keep=1: the last epoch's
    # the shards were staged once in the bucket and copied once per node (a node's later
    # trials reuse its copy)
    assert f"{BUCKET}/team/shards/{key}/manifest.json" in listing(fs, f"{BUCKET}/team/shards/{key}")
    copies = [line for line in output.splitlines() if f"copied shards {key[:12]}" in line]
    assert len(copies) == 2, "\n".join(copies) or output[-6000:]
    assert not (tmp_path / "project" / "ray_results").exists()  # nothing of the search on the head's disk

    # MLflow: the parent run, one child per trial with every epoch's metrics, and where it ran
    from mlflow.tracking import MlflowClient

    c = MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name("tune-cluster")
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_EXPERIMENT}` = '{name}'")
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "tune-parent"]
    children = {r.data.tags[TAG_TRIAL]: r for r in runs if r.data.tags.get(TAG_ROLE) == "tune-trial"}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert set(children) == set(rows)
    for trial_id, run in children.items():
        assert run.data.tags[PARENT_TAG] == parents[0].info.run_id
        want = list(range(1, rows[trial_id]["epochs_run"] + 1))
        for metric in ("val_mAP", "epoch/loss"):
            assert sorted(m.step for m in c.get_metric_history(run.info.run_id, metric)) == want, (trial_id, metric)
        assert set(run.data.tags[TAG_RAY_NODES].split(",")) <= nodes
        assert set(run.data.tags[TAG_TRIAL_NODES].split(",")) <= nodes
        # ended with its outcome, the trials ASHA stopped included (run_trial never returned)
        assert run.info.status == "FINISHED", (trial_id, run.info.status)
        assert run.data.tags["vireid.trial_outcome"] == (
            "completed" if rows[trial_id]["completed"] else "early_stopped")
    assert {n for r in children.values() for n in r.data.tags[TAG_RAY_NODES].split(",")} == nodes
    # two trials ran at the same time, one on each node (driver and worker)
    live = {t: _interval(c, r) for t, r in children.items()}
    pairs = [(a, b) for a in children for b in children if a < b
             and live[a][0] < live[b][1] and live[b][0] < live[a][1]]
    assert pairs, live
    for a, b in pairs:
        ta, tb = children[a].data.tags, children[b].data.tags
        assert ta[TAG_TRIAL_NODES] != tb[TAG_TRIAL_NODES], (a, b, ta, tb)
        assert ta[TAG_RAY_NODES] != tb[TAG_RAY_NODES], (a, b, ta, tb)


def _wait(what: str, probe, driver: subprocess.Popen, log: Path, timeout: float = 900):
    """Poll ``probe()`` every half second until it returns something truthy (returned); fail
    if the driver exits first or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert driver.poll() is None, f"the stage ended before {what}:\n" + log.read_text(errors="replace")[-5000:]
        assert time.monotonic() < deadline, f"no {what} after {timeout}s:\n" + log.read_text(errors="replace")[-5000:]
        time.sleep(0.5)


def _stage_process(dvc_pid: int) -> psutil.Process:
    """The ``python -m pipelines.tune`` process that ``dvc repro`` (``dvc_pid``) started."""
    procs = [p for p in psutil.Process(dvc_pid).children(recursive=True)
             if p.cmdline()[1:3] == ["-m", "pipelines.tune"]]
    assert len(procs) == 1, [p.cmdline() for p in psutil.Process(dvc_pid).children(recursive=True)]
    return procs[0]


def _terminated(fs, experiment: str) -> set[str]:
    """The trials that Tune's latest state in the bucket records as finished (none while the
    state is being uploaded: SeaweedFS can serve an object whose upload is under way, cut
    short, to a concurrent reader; the caller polls again)."""
    states = sorted(p for p in listing(fs, experiment) if re.fullmatch(r".*/experiment_state-.*\.json", p))
    if not states:
        return set()
    with fs.open_input_stream(states[-1]) as fh:
        text = fh.read()
    try:
        state = json.loads(text)
    except json.JSONDecodeError:
        return set()
    trials = [json.loads(trial) for trial, _ in state["trial_data"]]
    return {t["trial_id"] for t in trials if t.get("status") == "TERMINATED"}


@pytest.mark.long  # about 10 min: make test-long, not make test
@pytest.mark.timeout(2700)
def test_tune_stage_survives_a_lost_node_and_a_killed_driver(
        s3: SeaweedS3, mlflow_server: str, cluster: LocalRayCluster, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Three trials (FIFO: every trial runs its 3 epochs, so the best trial depends on the
    trials' results only, not on which arrived first). An uninterrupted search gives the
    reference. In a second search (its own experiment: another ``train.storage`` prefix):
    (b) once a trial whose worker runs on the isolated node has a checkpoint, every process
    of that node is SIGKILLed and a replacement node joins; (a) once Tune's state in the
    bucket records a finished trial, the stage's driver is SIGKILLed, and the stage is run
    again. Asserted: the rerun restores the experiment, does not run the finished trials
    again, every trial's epochs were each reported once (none trained twice), the trial hit
    by the node loss resumed on another node, and the best trial is the reference's. The
    search under test runs as ``dvc repro tune`` (the driver killed is the stage's ``python -m
    pipelines.tune``, DVC reports the stage failed, and ``dvc repro tune`` is run again); the
    reference, with its own parameters file, runs the stage's command directly."""
    skip_unless_root()
    project, cfg, shards, nodes, (hide, keep) = _two_nodes(cluster, s3, mlflow_server, tmp_path, tmp_path_factory,
                                                           num_samples=3, scheduler="fifo")
    _, fs = ray_storage(f"s3://{BUCKET}", s3.environ())
    env = stage_env(cluster, s3)
    from mlflow.tracking import MlflowClient

    c = MlflowClient(mlflow_server)

    reference = replace(cfg, train={"storage": f"s3://{BUCKET}/reference"})
    (project / "reference.yaml").write_text(yaml.safe_dump(config_to_dict(reference)), encoding="utf-8")
    ref = subprocess.run([*STAGE, "--params", "reference.yaml", "--out", "outputs/reference"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert ref.returncode == 0, (ref.stdout + ref.stderr)[-6000:]
    expected = json.loads((project / "outputs" / "reference" / "summary.json").read_text())

    name = experiment_name(cfg, ShardSet(shards).manifest)
    experiment = f"{BUCKET}/team/tune/{name}"
    isolated = next(iter(nodes - {n["NodeID"] for n in cluster.wait_for_nodes(2)
                                  if n["Resources"].get("node_head")}))
    first = next(iter(cluster.namespace_pids()))

    def trial_runs() -> dict[str, object]:
        exp = c.get_experiment_by_name("tune-cluster")
        runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_EXPERIMENT}` = '{name}'")
        return {r.data.tags[TAG_TRIAL]: r for r in runs if r.data.tags.get(TAG_ROLE) == "tune-trial"}

    def on_isolated_node_after_an_epoch() -> str | None:
        for trial_id, run in trial_runs().items():
            if run.data.tags.get(TAG_RAY_NODES, "").split(",")[-1] == isolated:
                steps = {m.step for m in c.get_metric_history(run.info.run_id, "val_mAP")}
                if steps and max(steps) < cfg.tune.epochs:
                    return trial_id
        return None

    log = tmp_path / "faulty.log"
    with log.open("wb") as out:
        # Tune saves its state every 2 s (default: adaptive, 10 s and more), so that a
        # finished trial is in the bucket before the search ends
        driver = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "tune"], cwd=project,
                                  env=_dvc_env({**env, "TUNE_GLOBAL_CHECKPOINT_S": "2"}), stdout=out,
                                  stderr=subprocess.STDOUT)
        try:
            # (b) the node of a running trial's worker is lost at once, after the trial's first
            # epoch was reported (its checkpoint committed: rank 0 waits for that); a new node joins
            hit = _wait("a trial with a checkpoint on the isolated node", on_isolated_node_after_an_epoch, driver, log)
            assert cluster.kill_namespace(first) and first not in cluster.namespace_pids()
            cluster.add_isolated_node({"node_worker": 1}, hide=hide, keep=keep, num_cpus=3)
            # (a) the driver is killed once a trial is finished in Tune's saved state, not all
            done = _wait("a finished trial in Tune's saved state",
                         lambda: (lambda t: t if 0 < len(t) < 3 else None)(_terminated(fs, experiment)), driver, log)
            stage = _stage_process(driver.pid)
            stage.kill()  # SIGKILL
            assert driver.wait(timeout=120) != 0  # DVC: the stage failed
            assert not stage.is_running()
            starts = {t: r.data.metrics["trial_starts"] for t, r in trial_runs().items()}
        finally:
            if driver.poll() is None:
                driver.kill()
    assert not (project / "outputs" / "tune" / "summary.json").exists()

    rerun = _dvc(project, "repro", "tune", env=env, timeout=1200)
    output = rerun.stdout + rerun.stderr
    (tmp_path / "rerun.log").write_text(output)
    assert rerun.returncode == 0, output[-6000:]
    assert f"resuming Tune experiment {experiment}" in output
    summary = json.loads((project / "outputs" / "tune" / "summary.json").read_text())
    assert summary["experiment"] == name
    rows = {r["trial_id"]: r for r in summary["trials"]}
    assert len(rows) == 3 and summary["num_errored"] == 0 and summary["num_completed"] == 3, summary

    runs = trial_runs()
    assert set(runs) == set(rows)
    for trial_id, run in runs.items():
        # every epoch reported once: a resumed trial continued after its checkpoint
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_mAP")]
        assert sorted(steps) == [1, 2, 3], (trial_id, steps)
    # the finished trials were not started again by the rerun; the others were
    for trial_id, run in runs.items():
        again = run.data.metrics["trial_starts"] - starts.get(trial_id, 0)
        assert again == (0 if trial_id in done else 1), (trial_id, done, starts)
    # the trial hit by the node loss resumed on another node
    hit_nodes = runs[hit].data.tags[TAG_RAY_NODES].split(",")
    assert hit_nodes[0] == isolated and len(hit_nodes) >= 2 and isolated not in hit_nodes[1:], hit_nodes
    assert "resumed after epoch" in log.read_text(errors="replace") + output

    # the same trials (seeded sampling) with the same results, hence the same best trial
    def by_index(s: dict) -> dict[str, tuple]:
        return {r["trial_id"].rsplit("_", 1)[1]: (r["memory_size"], r["temperature"], r["final_val_mAP"])
                for r in s["trials"]}

    got, want = by_index(summary), by_index(expected)
    assert {k: v[:2] for k, v in got.items()} == {k: v[:2] for k, v in want.items()}
    assert (summary["best"]["memory_size"], summary["best"]["temperature"]) == \
        (expected["best"]["memory_size"], expected["best"]["temperature"]), (got, want)
    assert summary["best"]["val_mAP"] == pytest.approx(expected["best"]["val_mAP"], abs=1e-6), (got, want)
    for index, (_, _, final) in want.items():  # every trial, the resumed ones included
        assert got[index][2] == pytest.approx(final, abs=1e-6), (index, got, want)
