"""DVC stage ``register``: log the trained model to the pipeline's MLflow run and register
it; alias ``champion`` moves only to a better model on the same protocol
(:mod:`vireid.tracking.registry`). Writes ``outputs/register/registration.json``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from pipelines.common import (
    clean_stale_temporaries,
    load_config,
    run_entry,
    setup_logging,
    stage_parser,
)
from vireid.config import config_to_dict
from vireid.io import atomic_write_json
from vireid.tracking import (
    TrackingError,
    git_commit,
    headline_value,
    log_embedder,
    protocol_key,
    read_run_record,
    register,
    resolve_target,
    resumed_run,
    start_pipeline_run,
)
from vireid.tracking.runs import TAG_DATA_HASH, get_run, set_tags
from vireid.training.checkpoint import load_model

log = logging.getLogger("pipelines.register")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrackingError(f"{path}: no {what} (run the stage that writes it first)") from None
    except (OSError, ValueError) as e:
        raise TrackingError(f"{path}: unreadable {what} ({e})") from e


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="outputs/train/model.pt", help="trained model file")
    parser.add_argument("--metrics", default="outputs/eval/metrics.json", help="evaluation metrics")
    parser.add_argument("--run-file", default="outputs/train/mlflow_run.json",
                        help="the train stage's MLflow run record (missing: a new run is started)")
    parser.add_argument("--manifest", default="data/shards/manifest.json",
                        help="shard manifest, for the data hash when the run has none")
    parser.add_argument("--out", default="outputs/register/registration.json", help="registration record")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.params)
    clean_stale_temporaries(args.out)
    repo = Path.cwd()
    target = resolve_target(cfg.track, repo)

    model, meta = load_model(args.model, "cpu", dataset=cfg.data.dataset,
                             regdb_trial=cfg.data.regdb_trial if cfg.data.dataset == "regdb" else None)
    metrics = _read_json(Path(args.metrics), "metrics.json")
    value = headline_value(metrics, cfg.eval.headline)
    protocol = protocol_key(cfg.eval.headline, dataset=cfg.data.dataset, sysu_sampler=cfg.eval.sysu_sampler,
                            regdb_trial=cfg.data.regdb_trial, rerank=cfg.eval.rerank)
    commit = git_commit(repo)

    run_file = Path(args.run_file)
    data_hash = ""
    if run_file.is_file():
        run_id = read_run_record(run_file)["run_id"]
        data_hash = get_run(target.tracking_uri, run_id).data.tags.get(TAG_DATA_HASH, "")
    else:
        log.warning("%s missing: starting a new MLflow run for the registration", run_file)
        run_id = ""
    if not data_hash and Path(args.manifest).is_file():
        data_hash = str(_read_json(Path(args.manifest), "shard manifest").get("sha256_total", ""))
    if not run_id:
        run_id = start_pipeline_run(target, config=config_to_dict(cfg), git_commit=commit,
                                    data_hash=data_hash, dataset=cfg.data.dataset, protocol=protocol,
                                    run_name="register")

    with resumed_run(target.tracking_uri, run_id):
        model_uri = log_embedder(target.tracking_uri, run_id, model, meta)
        record = register(target.tracking_uri, model_name=cfg.track.model_name, model_uri=model_uri,
                          run_id=run_id, protocol=protocol, headline=cfg.eval.headline, value=value,
                          data_hash=data_hash, git_commit=commit,
                          champion_alias=cfg.track.champion_alias,
                          challenger_alias=cfg.track.challenger_alias)
        set_tags(target.tracking_uri, run_id, {"registered_version": record["version"],
                                               "registered_alias": record["alias"]})
    atomic_write_json(args.out, record)
    print(f"registered {record['model_name']} v{record['version']} as {record['alias']}: {record['reason']}")
    return record


if __name__ == "__main__":
    sys.exit(run_entry(main))
