"""DVC stage ``evaluate``: the test protocols on the trained model.

Reads ``data`` (which dataset and RegDB trial) and ``eval`` (``eval.max_rank`` is the length of
the CMC curves, ``eval.stable_argsort`` the tie rule of every ranking). Loads ``outputs/train/model.pt``
(refusing a model trained for another dataset, image size or RegDB trial), extracts the
query and gallery features once from the shards, and runs the SYSU-MM01 protocols (every
``eval.sysu_modes`` x ``eval.sysu_shots``, ``eval.trials`` gallery draws) or both RegDB
directions. Refuses shards the model's split was not made from (another dataset, RegDB trial
of the shards' manifest, shard contents, or test identities it trained on). Writes to
``outputs/eval/``: ``metrics.json`` (percent; DVC metrics; with its ``provenance``: model and
shard hashes, dataset, data kind, RegDB trial of the shards, protocol; and the chance level
of the headline protocol, random unit embeddings, 10 draws, as ``chance/<protocol>/<metric>``),
``cmc.csv`` (DVC plots: column ``headline`` is the CMC of ``eval.headline``'s protocol, then
one column per protocol), ``cmc.png`` and ``ranked_list.png``. When the train stage's MLflow
run record exists and ``--model`` is the train stage's model (or ``--run-file`` names a record),
the metrics and plots are logged into that run (``track`` says which store
it must be in: a record of another store, e.g. of the checkout this one was copied from, is
refused).

``--model`` may also name a model logged to MLflow (``models:/vireid@champion``,
``models:/vireid/3``, ``runs:/<id>/model``; the store of ``track``): it is loaded as
``vireid search`` loads it (vireid's own pt2 format only; a pickled model or one that ships
code is refused before it is read) and evaluated on the prepared shards and protocols of
``params.yaml``, whatever dataset it was trained on. Such a model carries no training split,
so the shard and trial checks of a ``model.pt`` cannot run; ``metrics.json``'s provenance
names the model instead (URI, registered version, its run, the dataset it was trained on),
and nothing is logged into the train stage's run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vireid.config import Config
from vireid.data.sample import Modality, Sample
from vireid.data.shards import ShardSet, ShardTable
from vireid.evaluation import regdb as regdb_eval
from vireid.evaluation import report
from vireid.evaluation.chance import chance_level
from vireid.evaluation.extract import table_features
from vireid.evaluation.provenance import PROVENANCE_KEY, check_shards_for_model, provenance
from vireid.evaluation.sysu import load_official_permutations, sample_gallery, sysu_protocols
from vireid.io import atomic_write_json, output_folder
from vireid.stages.entry import (
    clean_stale_temporaries,
    load_config,
    setup_logging,
    stage_parser,
)
from vireid.tracking.registry import protocol_key
from vireid.training.checkpoint import load_model

log = logging.getLogger("vireid.stages.evaluate")


def samples_of(table: ShardTable, split: str) -> list[Sample]:
    """The shard rows as :class:`Sample` records (row order kept)."""
    return [Sample(str(p), int(i), int(c), Modality.from_code(int(m)), split)
            for p, i, c, m in zip(table.path, table.identity, table.camera, table.modality, strict=True)]


def features(model: torch.nn.Module, table: ShardTable, cfg: Config, device: torch.device) -> np.ndarray:
    """Float32 [N, d] embeddings of every row of ``table`` (test transform, ``eval.flip``)."""
    return table_features(model, table, image_size=(cfg.data.image_height, cfg.data.image_width),
                          device=device, batch_size=cfg.eval.batch_size, flip=cfg.eval.flip)


def ranked_list(path: Path, qf: np.ndarray, gf: np.ndarray, q_ids: np.ndarray, g_ids: np.ndarray,
                q_images: Any, g_images: Any, n_queries: int = 6, k: int = 10,
                stable: bool = False) -> Path:
    """Top-``k`` gallery images of ``n_queries`` evenly spaced queries (``stable``: ties by index)."""
    rows = np.unique(np.linspace(0, len(qf) - 1, num=min(n_queries, len(qf))).round().astype(int))
    dist = -(qf[rows].astype(np.float64) @ gf.astype(np.float64).T)
    ranked = report.top_k(dist, k=min(k, gf.shape[0]), stable=stable)
    correct = g_ids[ranked] == q_ids[rows][:, None]
    titles = [f"query id {q_ids[r]}" for r in rows]
    return report.plot_ranked_list(path, rows.tolist(), ranked, correct, q_images, g_images, titles)


def evaluate(cfg: Config, model_path: Path, shards_dir: Path, out: Path,
             device: torch.device, *, logged: LoggedModel | None = None) -> dict[str, Any]:
    """Run the protocols of ``cfg`` and write the outputs; return the ``metrics.json`` object.
    ``logged``: a model from MLflow (:func:`load_logged`) instead of the file ``model_path``."""
    dataset = cfg.data.dataset
    if logged is not None:
        return _evaluate_loaded(cfg, logged, logged.meta, shards_dir, out, device, logged=logged)
    model, meta = load_model(model_path, device, dataset=dataset, image_height=cfg.data.image_height,
                             image_width=cfg.data.image_width)
    return _evaluate_loaded(cfg, model, meta, shards_dir, out, device, model_path=model_path)


class LoggedModel:
    """A model logged by the register stage, as evaluation takes it: ``embed(x, modality)``
    (L2-normalised, as ``vireid search`` ranks), its MLflow metadata and provenance."""

    def __init__(self, module: Any, meta: dict[str, Any], provenance: dict[str, Any]) -> None:
        self.module, self.meta, self.provenance = module, meta, provenance

    def eval(self) -> LoggedModel:  # a torch.export program has no train/eval switch
        return self

    def embed(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.module(x, modality).float(), dim=1)


def load_logged(model_uri: str, tracking_uri: str, cfg: Config, device: torch.device) -> LoggedModel:
    """``models:/...`` or ``runs:/...`` from ``tracking_uri`` through the loading path of
    ``vireid search`` (:func:`vireid.tracking.model.load_logged_embedder`: foreign formats
    refused); its input size must be ``data.image_height`` x ``data.image_width``."""
    from vireid.tracking.model import load_logged_embedder
    from vireid.tracking.store import TrackingError, client

    module, meta = load_logged_embedder(tracking_uri, model_uri, device)
    size = (int(meta["image_height"]), int(meta["image_width"]))
    if size != (cfg.data.image_height, cfg.data.image_width):
        raise TrackingError(f"{model_uri}: takes {size[0]}x{size[1]} images but data.image_height/width "
                            f"are {cfg.data.image_height}x{cfg.data.image_width} (prepare the shards "
                            "at the model's size)")
    prov: dict[str, Any] = {"model_uri": model_uri, "model_tracking_uri": tracking_uri,
                            "model_dataset": meta.get("dataset") or None, "model_arch": meta.get("arch") or None}
    if model_uri.startswith("models:/"):  # which version an alias pointed at when evaluated
        name, _, ref = model_uri.removeprefix("models:/").partition("@")
        mlflow_client = client(tracking_uri)
        try:
            if ref:
                version = mlflow_client.get_model_version_by_alias(name, ref)
            elif "/" in name:
                version = mlflow_client.get_model_version(*name.split("/", 1))
            else:
                version = None
        except Exception:  # a models:/<model id> URI: no registered version to name
            version = None
        if version is not None:
            prov.update(model_name=version.name, model_version=str(version.version),
                        model_run_id=version.run_id)
    elif model_uri.startswith("runs:/"):
        prov["model_run_id"] = model_uri.removeprefix("runs:/").split("/", 1)[0]
    return LoggedModel(module, meta, prov)


def _evaluate_loaded(cfg: Config, model: Any, meta: dict[str, Any], shards_dir: Path, out: Path,
                     device: torch.device, *, model_path: Path | None = None,
                     logged: LoggedModel | None = None) -> dict[str, Any]:
    dataset = cfg.data.dataset
    if logged is None and dataset == "regdb":  # a model trained on another split trial would see test identities
        try:
            regdb_eval.check_regdb_trial(meta.get("regdb_trial"), cfg.data.regdb_trial)
        except regdb_eval.TrialMismatchError as e:
            raise regdb_eval.TrialMismatchError(f"{model_path}: {e}") from e
    shards = ShardSet(shards_dir)
    q_table, g_table = shards.table("query"), shards.table("gallery")
    manifest_path = Path(shards_dir) / "manifest.json"
    if logged is None:  # a logged model carries no training split to check against
        check_shards_for_model(meta, shards.manifest, manifest_path, model_path=model_path,
                               test_identities=np.concatenate([q_table.identity, g_table.identity]).tolist())
    trial = shards.manifest.get("regdb_trial") if dataset == "regdb" else None  # the shards' trial
    prov = provenance(
        model_path=manifest_path if model_path is None else model_path, manifest=shards.manifest,
        manifest_path=manifest_path,
        protocol=protocol_key(cfg.eval.headline, dataset=dataset, sysu_sampler=cfg.eval.sysu_sampler,
                              regdb_trial=trial or 1, rerank=cfg.eval.rerank, flip=cfg.eval.flip,
                              trials=cfg.eval.trials),
        headline=cfg.eval.headline, sysu_sampler=cfg.eval.sysu_sampler, rerank=cfg.eval.rerank,
        trials=cfg.eval.trials, flip=cfg.eval.flip)
    if logged is not None:
        prov = {**prov, "model_sha256": None, **logged.provenance}
    qf = features(model, q_table, cfg, device)
    gf = features(model, g_table, cfg, device)
    log.info("extracted %d query and %d gallery features (d=%d)", len(qf), len(gf), qf.shape[1])
    entries: dict[str, dict[str, Any]] = {}
    curves: dict[str, np.ndarray] = {}
    headline_key = cfg.eval.headline.rsplit("/", 1)[0]
    if dataset == "sysu":
        query, pool = samples_of(q_table, "query"), samples_of(g_table, "gallery")
        perms = (load_official_permutations(cfg.eval.official_perm_path)
                 if cfg.eval.sysu_sampler == "official" else None)

        def run(qf: np.ndarray, gf: np.ndarray, modes: Any = cfg.eval.sysu_modes,
                shots: Any = cfg.eval.sysu_shots, rerank: bool = cfg.eval.rerank) -> dict[str, Any]:
            return sysu_protocols(query, qf, pool, gf, modes=modes, shots=shots,
                                  sampler=cfg.eval.sysu_sampler, trials=cfg.eval.trials, perms=perms,
                                  chunk=cfg.eval.query_chunk, rerank=rerank,
                                  stable=cfg.eval.stable_argsort, max_rank=cfg.eval.max_rank)

        results = run(qf, gf)
        mode, shot = cfg.eval.headline.split("/")[1:3]

        def chance_run(q: np.ndarray, g: np.ndarray) -> dict[str, float]:  # the headline protocol only
            return report.sysu_entry(run(q, g, [mode], [shot], False)[headline_key])["mean"]

        for key, res in results.items():
            entries[key] = report.sysu_entry(res)
            curves[key] = report.mean_curve([t.result.cmc for t in res.trials], cfg.eval.max_rank)
        idx = sample_gallery(pool, mode, shot, 0, cfg.eval.sysu_sampler, perms)
        ranked_list(out / "ranked_list.png", qf, gf[idx], q_table.identity, g_table.identity[idx],
                    q_table.image, lambda j: g_table.image(int(idx[j])), stable=cfg.eval.stable_argsort)
    else:

        def run_regdb(qf: np.ndarray, gf: np.ndarray, rerank: bool = cfg.eval.rerank) -> dict[str, Any]:
            return regdb_eval.regdb_protocol(qf, q_table.identity, gf, g_table.identity, trial=trial,
                                             model_trial=meta.get("regdb_trial"),
                                             chunk=cfg.eval.query_chunk, rerank=rerank,
                                             stable=cfg.eval.stable_argsort, max_rank=cfg.eval.max_rank)

        res = run_regdb(qf, gf)
        entries.update(report.regdb_entries(regdb_eval.aggregate_regdb({trial: res})))

        def chance_run(q: np.ndarray, g: np.ndarray) -> dict[str, float]:
            aggregated = regdb_eval.aggregate_regdb({trial: run_regdb(q, g, False)})
            return report.regdb_entries(aggregated)[headline_key]["mean"]

        for direction, r in res.items():
            curves[f"regdb/{direction}"] = report.mean_curve([r.cmc], cfg.eval.max_rank)
        ranked_list(out / "ranked_list.png", qf, gf, q_table.identity, g_table.identity,
                    q_table.image, g_table.image, stable=cfg.eval.stable_argsort)
    if headline_key not in curves:
        raise ValueError(f"eval.headline: {cfg.eval.headline!r} is not among the protocols run "
                         f"({', '.join(curves)})")
    chance = {headline_key: chance_level(chance_run, len(qf), len(gf))}
    log.info("chance level of %s (random unit embeddings): %s", headline_key,
             " ".join(f"{k}={v:.2f}" for k, v in chance[headline_key].items()))
    report.write_cmc_csv(out / "cmc.csv", {"headline": curves[headline_key], **curves})
    report.plot_cmc(out / "cmc.png", curves, title=f"CMC ({dataset}, selected epoch {meta.get('selected_epoch', '?')})")
    metrics = report.build_metrics(entries, chance) | {PROVENANCE_KEY: prov}
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


TRAIN_MODEL, TRAIN_RUN_FILE = "outputs/train/model.pt", "outputs/train/mlflow_run.json"


def run_file_for(model: str, run_file: str | None) -> str | None:
    """The run record to log into: ``run_file`` when given; else the train stage's, but only
    when ``model`` is the train stage's model file (that run's provenance is that model's)."""
    if run_file is not None:
        return run_file
    if Path(model).resolve() == Path(TRAIN_MODEL).resolve():
        return TRAIN_RUN_FILE
    log.info("%s is not the train stage's %s: not logged into its MLflow run (--run-file to log)",
             model, TRAIN_MODEL)
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", default="outputs/train/model.pt",
                        help="trained model file, or a logged model: models:/vireid@champion, runs:/<id>/model")
    parser.add_argument("--shards", default="data/shards", help="prepared shard directory")
    parser.add_argument("--out", default="outputs/eval", help="output directory")
    parser.add_argument("--run-file", default=None,
                        help="MLflow run record to log the metrics into, if present (default: the train "
                             f"stage's {TRAIN_RUN_FILE}, and only when --model is its {TRAIN_MODEL}: "
                             "another model's evaluation is not logged into the pipeline's run)")
    args = parser.parse_args(argv)
    args.run_file = run_file_for(args.model, args.run_file)
    setup_logging()
    cfg = load_config(args.params)
    if args.run_file is not None and Path(args.run_file).is_file():  # logged into at the end: asked now
        from vireid.tracking.store import check_server

        check_server(cfg.track.tracking_uri)
    out = Path(args.out)
    clean_stale_temporaries(*(out / name for name in ("metrics.json", "cmc.csv", "cmc.png", "ranked_list.png")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    logged = None
    if args.model.startswith(("models:/", "runs:/")):
        from vireid.tracking import resolve_target

        logged = load_logged(args.model, resolve_target(cfg.track, Path.cwd()).tracking_uri, cfg, device)
    with output_folder(out):  # a refused evaluation leaves no empty --out folder
        metrics = evaluate(cfg, Path(args.model), Path(args.shards), out, device, logged=logged)
    if logged is None and args.run_file is not None and Path(args.run_file).is_file():
        from vireid.tracking import (
            log_metrics_json,
            log_plots,
            read_run_record,
            resolve_target,
            resumed_run,
        )
        from vireid.tracking.runs import check_recorded_run, set_tags
        from vireid.tracking.tags import TAG_EVAL_PREFIX

        target = resolve_target(cfg.track, Path.cwd())
        run_id = check_recorded_run(read_run_record(args.run_file), args.run_file, target, Path.cwd())
        uri = target.tracking_uri
        with resumed_run(uri, run_id):
            log_metrics_json(uri, run_id, {k: v for k, v in metrics.items() if k != PROVENANCE_KEY})
            set_tags(uri, run_id, {f"{TAG_EVAL_PREFIX}{k}": v for k, v in metrics[PROVENANCE_KEY].items()})
            log_plots(uri, run_id, [out / "cmc.png", out / "ranked_list.png"])
    headline = metrics.get(cfg.eval.headline)
    print(f"{cfg.eval.headline} = {headline:.2f} % ({metrics['units']}); metrics in {out / 'metrics.json'}")
    return metrics

