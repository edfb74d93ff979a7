"""Ray Tune search over the memory size S and the distillation temperature T.

Each trial is a Ray Train run: a Tune *function trainable* builds a ``TorchTrainer`` with
:func:`vireid.training.ray_train.build_trainer` for the trial's configuration and passes
``TuneReportCallback`` so that every epoch's ``ray.train.report`` (``epoch``, ``val_mAP``...)
reaches Tune (the Ray Train V2 pattern, docs "Hyperparameter Tuning with Ray Tune"). A Tune
trial reserves ``driver_cpus`` for this driver function; its Train workers reserve their own
resources in a separate placement group, so a cluster runs ``max_concurrent`` trials when
it has ``max_concurrent * (driver_cpus + num_workers * cpus_per_worker)`` CPUs
(:func:`cpus_needed`).

ASHA (``AsyncHyperBandScheduler``) stops trials whose ``val_mAP`` falls below the rung
cut-off, at epochs ``grace_period * reduction_factor**k`` below ``tune.epochs``; the search
is seeded random search (``BasicVariantGenerator(random_state=tune.seed)``).

Resuming: the experiment's name is fixed by the search's inputs (:func:`experiment_name`),
and a search whose ``storage_path/name`` holds Tune state is restored with
``Tuner.restore(..., resume_errored=True)``: finished trials are not run again, unfinished
ones start again and their Ray Train run (named after the trial id) continues from its
last checkpoint. MLflow: one parent run per experiment and one child run per trial (tag
``mlflow.parentRunId``), found again on resume by their tags.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.tune
import yaml
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from vireid.config import Config, config_from_dict, config_to_dict, replace
from vireid.data.shards import ShardSet
from vireid.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from vireid.tracking.store import TrackingTarget, client, ensure_experiment

log = logging.getLogger(__name__)

METRIC = "val_mAP"
TIME_ATTR = "epoch"
TAG_EXPERIMENT = "vireid.tune_experiment"
TAG_ROLE = "vireid.role"
TAG_TRIAL = "vireid.tune_trial_id"
PARENT_TAG = "mlflow.parentRunId"


# ------------------------------------------------------------------------------ config


def trial_config(cfg: Config, memory_size: int, temperature: float) -> Config:
    """``cfg`` with S and T set, ``tune.epochs`` epochs, validation and a checkpoint every
    epoch (ASHA reads ``val_mAP`` each epoch; a restarted trial continues from the last one)."""
    return replace(cfg, model={"memory_size": int(memory_size)},
                   loss={"temperature": float(temperature)},
                   train={"epochs": cfg.tune.epochs, "validate_every": 1, "checkpoint_every": 1})


def search_space(cfg: Config) -> dict[str, Any]:
    """``memory_size``: choice of ``tune.memory_sizes``; ``temperature``: log-uniform in
    ``[tune.temperature_min, tune.temperature_max]`` (a constant when they are equal)."""
    t = cfg.tune
    temperature: Any = (t.temperature_min if t.temperature_min == t.temperature_max
                        else ray.tune.loguniform(t.temperature_min, t.temperature_max))
    return {"memory_size": ray.tune.choice(list(t.memory_sizes)), "temperature": temperature}


def experiment_name(cfg: Config, manifest: Mapping[str, Any]) -> str:
    """``tune-<hash>`` of everything the search's results depend on (all sections but
    ``eval`` and ``track``, and the shards' checksum): the same inputs, the same
    experiment (resumed); changed inputs, a fresh one."""
    plain = config_to_dict(cfg)
    key = {k: plain[k] for k in ("data", "model", "loss", "train", "tune")}
    key["shards"] = manifest.get("sha256_total")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"tune-{digest[:12]}"


def cpus_needed(cfg: Config, driver_cpus: float = 1.0) -> float:
    """Logical CPUs for ``tune.max_concurrent`` trials: each trial's driver plus its Train
    workers."""
    t = cfg.train
    return cfg.tune.max_concurrent * (driver_cpus + t.num_workers * t.cpus_per_worker)


def asha(cfg: Config) -> ASHAScheduler:
    """ASHA on ``val_mAP`` (max) with ``epoch`` as time, from ``cfg.tune``."""
    t = cfg.tune
    return ASHAScheduler(time_attr=TIME_ATTR, metric=METRIC, mode="max", max_t=t.epochs,
                         grace_period=t.grace_period, reduction_factor=t.reduction_factor)


def rung_epochs(cfg: Config) -> list[int]:
    """The epochs at which ASHA may stop a trial: ``grace * rf**k < tune.epochs``."""
    t = cfg.tune
    rungs, e = [], t.grace_period
    while e < t.epochs:
        rungs.append(e)
        e *= t.reduction_factor
    return rungs


# ------------------------------------------------------------------------------ MLflow


@dataclass(frozen=True)
class Tracking:
    """Where the trials log: the store, the experiment id and the parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    name: str  # Tune experiment name (tag on parent and children)


def _find_run(tracking_uri: str, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client(tracking_uri).search_runs([experiment_id], filter_string=query, max_results=1,
                                            order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def parent_run(target: TrackingTarget, cfg: Config, name: str) -> Tracking:
    """The experiment's parent run (created once; found again by its tags on resume)."""
    exp_id = ensure_experiment(target.tracking_uri, target.experiment, target.artifact_location)
    tags = {TAG_EXPERIMENT: name, TAG_ROLE: "tune-parent"}
    run_id = _find_run(target.tracking_uri, exp_id, tags)
    c = client(target.tracking_uri)
    if run_id is None:
        run = c.create_run(exp_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        from mlflow.entities import Param

        t = config_to_dict(cfg.tune)
        c.log_batch(run_id, params=[Param(f"tune.{k}", str(v)) for k, v in t.items()])
    else:
        c.update_run(run_id, status="RUNNING")
    return Tracking(target.tracking_uri, exp_id, run_id, name)


def child_run(tracking: Tracking, trial_id: str, trial_name: str, memory_size: int,
              temperature: float) -> str:
    """The trial's child run (tag ``mlflow.parentRunId``); reused when the trial restarts.
    Logs params ``memory_size``/``temperature`` and counts starts in metric ``trial_starts``."""
    tags = {TAG_EXPERIMENT: tracking.name, TAG_TRIAL: trial_id, PARENT_TAG: tracking.parent_run_id}
    c = client(tracking.tracking_uri)
    run_id = _find_run(tracking.tracking_uri, tracking.experiment_id, tags)
    starts = 1
    if run_id is None:
        run_id = c.create_run(tracking.experiment_id, run_name=trial_name,
                              tags={**tags, TAG_ROLE: "tune-trial"}).info.run_id
        c.log_param(run_id, "memory_size", str(memory_size))
        c.log_param(run_id, "temperature", repr(float(temperature)))
    else:
        c.update_run(run_id, status="RUNNING")
        previous = c.get_run(run_id).data.metrics.get("trial_starts", 0)
        starts = int(previous) + 1
    c.log_metric(run_id, "trial_starts", starts, step=starts)
    return run_id


class EpochLogger(ray.train.UserCallback):
    """Ray Train callback: each epoch's reported metrics to the trial's MLflow run, at
    step = epoch."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from mlflow.entities import Metric

        record = metrics[0]
        step = int(record.get(TIME_ATTR, 0))
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in record.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        client(self.tracking_uri).log_batch(self.run_id, metrics=batch)


# ------------------------------------------------------------------------------ trial


def run_trial(config: dict[str, Any], *, base: dict[str, Any], shards_dir: str, train_storage: str,
              tracking: dict[str, str] | None) -> None:
    """Tune function trainable: one Ray Train run for ``config`` (``memory_size``,
    ``temperature``), reporting every epoch to Tune through ``TuneReportCallback``."""
    ctx = ray.tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    cfg = trial_config(config_from_dict(base), config["memory_size"], config["temperature"])
    callbacks: list[ray.train.UserCallback] = []
    train_tracking = None
    run_id = None
    if tracking is not None:
        t = Tracking(**tracking)
        run_id = child_run(t, trial_id, trial_name, cfg.model.memory_size, cfg.loss.temperature)
        callbacks.append(EpochLogger(t.tracking_uri, run_id))
        train_tracking = {"tracking_uri": t.tracking_uri, "run_id": run_id}
    # Last: once Tune has a trial's final (or ASHA-stopping) result it ends the trial, so the
    # epoch must be in MLflow before Tune sees it.
    callbacks.append(TuneReportCallback())
    # Imported here: the training package is heavy and only the trial actors need it.
    from vireid.training.ray_train import build_trainer

    trainer = build_trainer(cfg, Path(shards_dir), Path(train_storage), trial_id,
                            callbacks=callbacks, tracking=train_tracking, num_to_keep=1)
    result = trainer.fit()
    if tracking is not None and run_id is not None:
        client(tracking["tracking_uri"]).set_terminated(run_id, "FAILED" if result.error else "FINISHED")
    if result.error is not None:
        raise result.error


# ------------------------------------------------------------------------------ search


def start_local_ray(num_cpus: int, object_store_mb: int = 256) -> str:
    """Start a local Ray whose own processes know its address; return the address.

    Ray Train's detached ``PlacementGroupCleaner`` asks the State API (served by the
    dashboard, hence ``include_dashboard=True``) whether a run's controller is gone, and a
    Tune trial ends by killing its actor and with it the controller, so this cleaner is
    what frees a finished trial's placement group. The State API finds the cluster through
    ``RAY_ADDRESS`` or, without it, by looking for running GCS processes, which fails when
    another Ray instance runs on the machine: the group then leaks and the next trial waits
    for CPUs forever. So the GCS port is chosen here (``RAY_GCS_SERVER_PORT``) and
    ``RAY_ADDRESS`` set while Ray starts, for its processes to inherit; this process's
    environment is restored afterwards.
    """
    import os
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port = int(sock.getsockname()[1])
    address = f"{ray.util.get_node_ip_address()}:{port}"
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    os.environ.update(RAY_ADDRESS=address, RAY_GCS_SERVER_PORT=str(port))
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                 dashboard_host="127.0.0.1", object_store_memory=object_store_mb * 1024 * 1024,
                 log_to_driver=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return address



class SearchIncomplete(RuntimeError):
    """The search stopped before all trials finished (interrupted); rerun to resume it."""



def run_search(
    cfg: Config,
    shards_dir: str | Path,
    storage_path: str | Path,
    out_dir: str | Path,
    *,
    tracking: TrackingTarget | None = None,
    name: str | None = None,
    driver_cpus: float = 1.0,
    callbacks: Sequence[ray.tune.Callback] = (),
    object_store_mb: int = 256,
) -> dict[str, Any]:
    """Run (or resume) the search and write ``best_params.yaml``, ``summary.json`` and
    ``tune.png`` to ``out_dir``; return the summary.

    ``storage_path``: where Tune and the trials' Ray Train runs keep their state (made
    absolute; must be shared by all nodes on a cluster). ``name``: the experiment name,
    default :func:`experiment_name`. ``callbacks``: extra Tune callbacks (saved with the
    experiment: a resumed search runs the first run's callbacks). Starts a local
    Ray with :func:`cpus_needed` CPUs unless Ray is already initialised.
    """
    shards_dir = Path(shards_dir).resolve()
    uri = "://" in str(storage_path)  # s3://... on a cluster; a local path otherwise
    storage = str(storage_path).rstrip("/") if uri else str(Path(storage_path).resolve())
    out_dir = Path(out_dir)
    manifest = ShardSet(shards_dir).manifest
    name = name or experiment_name(cfg, manifest)
    exp_path = f"{storage}/{name}"
    started = False
    if not ray.is_initialized():
        start_local_ray(math.ceil(cpus_needed(cfg, driver_cpus)), object_store_mb)
        started = True
    try:
        track = parent_run(tracking, cfg, name) if tracking is not None else None
        trainable = ray.tune.with_resources(
            ray.tune.with_parameters(
                run_trial, base=config_to_dict(cfg), shards_dir=str(shards_dir),
                train_storage=f"{exp_path}/train",
                tracking=None if track is None else track.__dict__.copy()),
            {"cpu": driver_cpus})
        if ray.tune.Tuner.can_restore(exp_path):
            log.info("resuming Tune experiment %s", exp_path)
            tuner = ray.tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
        else:
            log.info("starting Tune experiment %s", exp_path)
            tuner = ray.tune.Tuner(
                trainable,
                param_space=search_space(cfg),
                tune_config=ray.tune.TuneConfig(
                    scheduler=asha(cfg),
                    # max_concurrent here: Tune's max_concurrent_trials is ignored when a
                    # BasicVariantGenerator is passed in
                    search_alg=BasicVariantGenerator(random_state=cfg.tune.seed,
                                                     max_concurrent=cfg.tune.max_concurrent),
                    num_samples=cfg.tune.num_samples,
                ),
                run_config=ray.tune.RunConfig(
                    name=name, storage_path=storage, callbacks=list(callbacks),
                    failure_config=ray.tune.FailureConfig(max_failures=1)),
            )
        grid = tuner.fit()
        trials = collect_trials(grid)
        finished = grid.num_terminated + grid.num_errors
    finally:
        if started:
            ray.shutdown()
    if finished < cfg.tune.num_samples:
        raise SearchIncomplete(
            f"Tune experiment {exp_path}: {finished} of {cfg.tune.num_samples} trials finished "
            "(interrupted); run again with the same parameters to resume it")
    summary = summarize(cfg, trials, name=name, experiment_path=exp_path)
    write_outputs(summary, trials, out_dir)
    if track is not None:
        finish_parent(track, summary, out_dir)
    return summary


def _clean(value: Any) -> Any:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def collect_trials(grid: ray.tune.ResultGrid) -> list[dict[str, Any]]:
    """Per trial: id, S, T, status, error and the per-epoch ``val_mAP`` history."""
    trials = []
    for result in grid:
        path = Path(result.path)
        trial_id = result.metrics.get("trial_id") if result.metrics else None
        df = result.metrics_dataframe
        history: list[dict[str, Any]] = []
        if df is not None and TIME_ATTR in df.columns:
            for _, row in df.iterrows():
                if row.get(TIME_ATTR) is None or not math.isfinite(float(row[TIME_ATTR])):
                    continue
                history.append({"epoch": int(row[TIME_ATTR]),
                                "val_mAP": _clean(row.get(METRIC)),
                                "val_rank1": _clean(row.get("val_rank1")),
                                "loss": _clean(row.get("loss"))})
        # a restarted trial reports its epochs again: keep the last record of each epoch
        by_epoch = {h["epoch"]: h for h in history}
        trials.append({
            "trial_id": trial_id or path.name,
            "memory_size": int(result.config["memory_size"]),
            "temperature": float(result.config["temperature"]),
            "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}",
            "history": [by_epoch[e] for e in sorted(by_epoch)],
        })
    return sorted(trials, key=lambda t: t["trial_id"])


def summarize(cfg: Config, trials: Sequence[Mapping[str, Any]], *, name: str,
              experiment_path: str) -> dict[str, Any]:
    """The search in numbers: each trial's epochs and val_mAP, ASHA's savings, the best S/T.

    Best: the highest ``val_mAP`` at the last epoch among trials that reached
    ``tune.epochs`` (ASHA's survivors); when none did, among all trials at their last epoch.
    """
    max_t = cfg.tune.epochs
    rows = []
    for t in trials:
        hist = [h for h in t["history"] if h["val_mAP"] is not None]
        epochs_run = max((h["epoch"] for h in t["history"]), default=0)
        rows.append({
            "trial_id": t["trial_id"], "memory_size": t["memory_size"], "temperature": t["temperature"],
            "epochs_run": epochs_run,
            "final_val_mAP": hist[-1]["val_mAP"] if hist else None,
            "best_val_mAP": max((h["val_mAP"] for h in hist), default=None),
            "early_stopped": t["error"] is None and 0 < epochs_run < max_t,
            "completed": t["error"] is None and epochs_run >= max_t,
            "error": t["error"],
        })
    full = [r for r in rows if r["completed"] and r["final_val_mAP"] is not None]
    pool = full or [r for r in rows if r["final_val_mAP"] is not None]
    best = max(pool, key=lambda r: r["final_val_mAP"]) if pool else None
    used = sum(r["epochs_run"] for r in rows)
    budget = len(rows) * max_t
    return {
        "experiment": name,
        "experiment_path": experiment_path,
        "metric": METRIC, "mode": "max", "time_attr": TIME_ATTR,
        "scheduler": {"name": "ASHA", "max_t": max_t, "grace_period": cfg.tune.grace_period,
                      "reduction_factor": cfg.tune.reduction_factor, "rungs": rung_epochs(cfg)},
        "search": {"algorithm": "random (BasicVariantGenerator)", "seed": cfg.tune.seed,
                   "num_samples": cfg.tune.num_samples, "memory_sizes": list(cfg.tune.memory_sizes),
                   "temperature_range": [cfg.tune.temperature_min, cfg.tune.temperature_max],
                   "max_concurrent": cfg.tune.max_concurrent},
        "num_trials": len(rows),
        "num_early_stopped": sum(r["early_stopped"] for r in rows),
        "num_completed": sum(r["completed"] for r in rows),
        "num_errored": sum(r["error"] is not None for r in rows),
        "trial_epochs_used": used,
        "trial_epochs_full": budget,
        "trial_epochs_saved": budget - used,
        "best_rule": "highest val_mAP at the last epoch among trials that reached tune.epochs",
        "best": None if best is None else {
            "trial_id": best["trial_id"], "memory_size": best["memory_size"],
            "temperature": best["temperature"], "val_mAP": best["final_val_mAP"],
            "epochs_run": best["epochs_run"]},
        "trials": rows,
    }


def best_params(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``{model: {memory_size: S}, loss: {temperature: T}}`` of the best trial."""
    best = summary["best"]
    if best is None:
        raise RuntimeError(f"Tune experiment {summary['experiment']}: no trial reported {METRIC}")
    return {"model": {"memory_size": int(best["memory_size"])},
            "loss": {"temperature": float(best["temperature"])}}


def write_outputs(summary: Mapping[str, Any], trials: Sequence[Mapping[str, Any]],
                  out_dir: str | Path) -> None:
    """``best_params.yaml``, ``summary.json``, ``tune.png`` in ``out_dir`` (atomically)."""
    out = Path(out_dir)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "best_params.yaml",
                      "# written by the tune stage (vireid.tuning): the best trial's S and T\n"
                      + yaml.safe_dump(best_params(summary), sort_keys=True))
    atomic_write_bytes(out / "tune.png", plot(summary, trials))


def plot(summary: Mapping[str, Any], trials: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG: val_mAP per epoch of every trial (early-stopped dashed, best thick) and the
    trials' S/T scatter coloured by final val_mAP."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = {r["trial_id"]: r for r in summary["trials"]}
    best_id = summary["best"]["trial_id"] if summary["best"] else None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for t in trials:
        r = rows[t["trial_id"]]
        pts = [(h["epoch"], h["val_mAP"]) for h in t["history"] if h["val_mAP"] is not None]
        if not pts:
            continue
        x, y = zip(*pts, strict=True)
        label = f"S={r['memory_size']} T={r['temperature']:.2f}"
        ax1.plot(x, y, "--" if r["early_stopped"] else "-", marker="o",
                 lw=3 if t["trial_id"] == best_id else 1.3, label=label)
    for rung in summary["scheduler"]["rungs"]:
        ax1.axvline(rung, color="grey", lw=0.6, ls=":")
    ax1.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation mAP")
    ax1.set_title("val_mAP per trial (dashed: stopped by ASHA; dotted: rungs)", fontsize=9)
    ax1.legend(fontsize=7)
    xs = [r["memory_size"] for r in summary["trials"]]
    ys = [r["temperature"] for r in summary["trials"]]
    cs = [r["final_val_mAP"] if r["final_val_mAP"] is not None else float("nan") for r in summary["trials"]]
    sc = ax2.scatter(xs, ys, c=cs, cmap="viridis", s=[40 + 30 * r["epochs_run"] for r in summary["trials"]],
                     edgecolors=["red" if r["trial_id"] == best_id else "black" for r in summary["trials"]],
                     linewidths=[2.5 if r["trial_id"] == best_id else 0.8 for r in summary["trials"]])
    fig.colorbar(sc, ax=ax2, label="final val_mAP")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    lo, hi = summary["search"]["temperature_range"]
    ax2.set_yticks([lo * (hi / lo) ** (i / 4) for i in range(5)] if hi > lo else [lo])
    ax2.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_xticks(summary["search"]["memory_sizes"], [str(s) for s in summary["search"]["memory_sizes"]])
    ax2.set_xlabel("memory size S")
    ax2.set_ylabel("temperature T")
    ax2.set_title("trials (size: epochs run; red edge: best)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def finish_parent(track: Tracking, summary: Mapping[str, Any], out_dir: str | Path) -> None:
    """Best S/T and ASHA's numbers on the parent run, the outputs as its artifacts; FINISHED."""
    c = client(track.tracking_uri)
    metrics = {k: summary[k] for k in ("num_trials", "num_early_stopped", "trial_epochs_used",
                                       "trial_epochs_full", "trial_epochs_saved")}
    if summary["best"]:
        metrics["best_val_mAP"] = summary["best"]["val_mAP"]
        c.set_tag(track.parent_run_id, "best.memory_size", str(summary["best"]["memory_size"]))
        c.set_tag(track.parent_run_id, "best.temperature", repr(summary["best"]["temperature"]))
    for k, v in metrics.items():
        c.log_metric(track.parent_run_id, k, float(v))
    for f in ("best_params.yaml", "summary.json", "tune.png"):
        c.log_artifact(track.parent_run_id, str(Path(out_dir) / f))
    c.set_terminated(track.parent_run_id, "FINISHED")
