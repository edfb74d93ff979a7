"""DVC stage ``register``: log the trained model to the pipeline's MLflow run and register it.

Alias ``champion`` moves only to a better model on the same protocol and data
(:mod:`vireid.tracking.registry`). Protocol and data hash come from ``metrics.json``'s
provenance, which must be the evaluation of this very model file. Idempotent: the same model
and evaluation give the same version and decision, and a registration killed half-way is
completed by the next run; an already registered version's record (``registration.json``)
reads the aliases as they stand now, not the decision stored at its registration. Before the model is logged, its ``torch.export`` program (what is
logged) is checked against the eager model's embeddings (:func:`vireid.tracking.model.check_export`):
a program that does not reproduce them is a ``TrackingError``, nothing logged or registered.
Writes ``outputs/register/registration.json``."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from vireid.config import config_to_dict
from vireid.evaluation.provenance import PROVENANCE_KEY, file_sha256
from vireid.io import atomic_write_json
from vireid.stages.entry import (
    clean_stale_temporaries,
    load_config,
    setup_logging,
    stage_parser,
)
from vireid.tracking import (
    TrackingError,
    git_commit,
    headline_value,
    log_embedder,
    read_run_record,
    register,
    resolve_target,
    resumed_run,
    start_pipeline_run,
)
from vireid.tracking.registry import find_version
from vireid.tracking.runs import check_recorded_run, set_tags
from vireid.tracking.store import check_server
from vireid.tracking.tags import (
    TAG_DATA_KIND,
    TAG_EVAL_SHA,
    TAG_MODEL_SHA,
    TAG_REGISTERED_ALIAS,
    TAG_REGISTERED_VERSION,
)
from vireid.training.checkpoint import load_model

log = logging.getLogger("vireid.stages.register")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrackingError(f"{path}: no {what} (run the stage that writes it first)") from None
    except (OSError, ValueError) as e:
        raise TrackingError(f"{path}: unreadable {what} ({e})") from e


def provenance_of(metrics: dict[str, Any], metrics_path: Path, model_path: Path) -> dict[str, Any]:
    """The evaluation's provenance, checked against the model file registered."""
    prov = metrics.get(PROVENANCE_KEY)
    if not isinstance(prov, dict) or not prov.get("protocol") or not prov.get("model_sha256"):
        raise TrackingError(f"{metrics_path}: no provenance (written by an older evaluate stage); "
                            "rerun evaluate (dvc repro -f evaluate)")
    model_sha = file_sha256(model_path)
    if prov["model_sha256"] != model_sha:
        raise TrackingError(f"{metrics_path}: evaluates another model (sha256 {prov['model_sha256'][:12]}) "
                            f"than {model_path} ({model_sha[:12]}); rerun evaluate")
    return prov


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="outputs/train/model.pt", help="trained model file")
    parser.add_argument("--metrics", default="outputs/eval/metrics.json", help="evaluation metrics")
    parser.add_argument("--run-file", default="outputs/train/mlflow_run.json",
                        help="the train stage's MLflow run record (missing: a new run is started)")
    parser.add_argument("--out", default="outputs/register/registration.json", help="registration record")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.params)
    check_server(cfg.track.tracking_uri)
    clean_stale_temporaries(args.out)
    repo = Path.cwd()
    target = resolve_target(cfg.track, repo)

    model, meta = load_model(args.model, "cpu", dataset=cfg.data.dataset,
                             regdb_trial=cfg.data.regdb_trial if cfg.data.dataset == "regdb" else None)
    metrics_path = Path(args.metrics)
    metrics = _read_json(metrics_path, "metrics.json")
    prov = provenance_of(metrics, metrics_path, Path(args.model))
    if prov.get("headline") != cfg.eval.headline:
        raise TrackingError(f"{metrics_path}: evaluated for headline {prov.get('headline')!r} but "
                            f"eval.headline is {cfg.eval.headline!r}; rerun evaluate")
    value = headline_value(metrics, cfg.eval.headline)
    protocol, data_hash = str(prov["protocol"]), str(prov.get("shards_sha256") or "")
    fingerprint = {TAG_MODEL_SHA: prov["model_sha256"],
                   TAG_EVAL_SHA: hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()}
    commit = git_commit(repo)

    existing = find_version(target.tracking_uri, cfg.track.model_name, fingerprint)
    run_file = Path(args.run_file)
    if existing is not None and existing.run_id:
        run_id = existing.run_id  # registered before (maybe interrupted): complete, do not duplicate
    elif run_file.is_file():
        run_id = check_recorded_run(read_run_record(run_file), run_file, target, repo)
    else:
        log.warning("%s missing: starting a new MLflow run for the registration", run_file)
        run_id = start_pipeline_run(target, config=config_to_dict(cfg), git_commit=commit,
                                    data_hash=data_hash, dataset=cfg.data.dataset, protocol=protocol,
                                    run_name="register")

    with resumed_run(target.tracking_uri, run_id):
        model_uri = existing.source if existing is not None else log_embedder(
            target.tracking_uri, run_id, model, meta, source=str(args.model))
        record = register(target.tracking_uri, model_name=cfg.track.model_name, model_uri=model_uri,
                          run_id=run_id, protocol=protocol, headline=cfg.eval.headline, value=value,
                          data_hash=data_hash, git_commit=commit,
                          champion_alias=cfg.track.champion_alias,
                          challenger_alias=cfg.track.challenger_alias,
                          fingerprint=fingerprint, extra_tags={TAG_DATA_KIND: prov.get("data_kind", "unknown")})
        set_tags(target.tracking_uri, run_id, {TAG_REGISTERED_VERSION: record["version"],
                                               TAG_REGISTERED_ALIAS: record["alias"] or "none"})
    atomic_write_json(args.out, record)
    held = f"as {record['alias']}" if record["alias"] else "holding no alias"
    again = ""
    if record["reused"]:
        champion = record.get("current_champion")
        again = " (already registered" + ("" if record["promoted"] else
                                          f"; {cfg.track.champion_alias} is v{champion}" if champion else "") + ")"
    print(f"registered {record['model_name']} v{record['version']} {held}{again}: {record['reason']}")
    return record

