"""The evaluate stage through its entry point ``pipelines.evaluate.main``: re-ranking, a RegDB
evaluation, and the official SYSU sampler reading ``eval.official_perm_path``.

Tiny trained models and shards of tests/training/conftest.py; each run writes its own
parameters file (every section, as under ``dvc repro``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io

from pipelines import evaluate as evaluate_stage
from tests._params import merged, params_file
from vireid.config import Config, config_to_dict
from vireid.data.shards import ShardSet
from vireid.errors import run_entry
from vireid.evaluation.sysu import load_official_permutations

#: one SYSU protocol, two gallery trials: enough to tell galleries apart, quick on 2 cores
SYSU_EVAL = {"trials": 2, "sysu_modes": ["all"], "sysu_shots": ["single"]}
METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def stage_argv(tmp_path: Path, tag: str, cfg: Config, model: Path, shards: Path,
               eval_overrides: Mapping[str, Any]) -> tuple[list[str], Path]:
    """The evaluate stage's command line for ``cfg`` with ``eval_overrides``, and its --out."""
    params = params_file(tmp_path / f"params-{tag}.yaml",
                         merged(config_to_dict(cfg), {"eval": dict(eval_overrides)}))
    out = tmp_path / f"eval-{tag}"
    return ["--params", str(params), "--model", str(model), "--shards", str(shards), "--out", str(out),
            "--run-file", str(tmp_path / "no-run-record.json")], out


def evaluate(tmp_path: Path, tag: str, cfg: Config, model: Path, shards: Path,
             **eval_overrides: Any) -> dict[str, Any]:
    """Run the stage; return metrics.json as written on disk."""
    argv, out = stage_argv(tmp_path, tag, cfg, model, shards, eval_overrides)
    returned = evaluate_stage.main(argv)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(returned))
    return on_disk


def cmc_columns(out: Path) -> dict[str, list[float]]:
    with (out / "cmc.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


# ---------------------------------------------------------------------------------------
# eval.rerank


def test_rerank_changes_the_metrics_and_is_recorded(tiny_shards, model_file, tmp_path) -> None:
    shards, cfg = tiny_shards
    plain = evaluate(tmp_path, "plain", cfg, model_file, shards, **SYSU_EVAL)
    rerank = evaluate(tmp_path, "rerank", cfg, model_file, shards, **SYSU_EVAL, rerank=True)
    key = "sysu/all/single"
    # the same queries and galleries (same draws), other distances
    assert rerank[key]["trial_ids"] == plain[key]["trial_ids"] == [0, 1]
    assert rerank[key]["per_trial"] != plain[key]["per_trial"]
    assert rerank[f"{key}/mAP"] != plain[f"{key}/mAP"]
    assert all(0.0 <= rerank[f"{key}/{m}"] <= 100.0 for m in METRICS)
    assert cmc_columns(tmp_path / "eval-rerank")[key] != cmc_columns(tmp_path / "eval-plain")[key]
    # recorded, and part of the protocol key the registry compares on
    assert (plain["provenance"]["rerank"], rerank["provenance"]["rerank"]) == (False, True)
    assert plain["provenance"]["protocol"] == "sysu/all/single@community+trials2"  # eval.trials 2
    assert rerank["provenance"]["protocol"] == "sysu/all/single@community+rerank+trials2"
    # the chance level is that of random embeddings without re-ranking: the same in both
    chance = [k for k in plain if k.startswith("chance/")]
    assert chance and {k: rerank[k] for k in chance} == {k: plain[k] for k in chance}


# ---------------------------------------------------------------------------------------
# RegDB


def test_regdb_evaluation_writes_both_directions(tiny_regdb, regdb_model_file, tmp_path) -> None:
    shards, cfg = tiny_regdb
    model = regdb_model_file
    metrics = evaluate(tmp_path, "regdb", cfg, model, shards, trials=1)
    assert metrics["units"] == "percent"
    entries = {k for k, v in metrics.items() if isinstance(v, dict) and k != "provenance"}
    assert entries == {"regdb/v2t", "regdb/t2v"}
    for direction in ("v2t", "t2v"):
        entry = metrics[f"regdb/{direction}"]
        assert entry["trial_ids"] == [1] and entry["trials"] == 1  # the shards' trial
        values = [metrics[f"regdb/{direction}/{m}"] for m in METRICS]
        assert all(0.0 <= v <= 100.0 for v in values), values
        assert values[:4] == sorted(values[:4])  # rank1 <= rank5 <= rank10 <= rank20
        # 4 test identities x 2 images per modality: every match is within 20 ranks
        assert metrics[f"regdb/{direction}/rank20"] == 100.0
        assert entry["mean"] == {m: metrics[f"regdb/{direction}/{m}"] for m in METRICS}
    # the chance level of the headline protocol only (regdb/v2t/mAP)
    assert {k for k in metrics if k.startswith("chance/")} == {f"chance/regdb/v2t/{m}" for m in METRICS}
    assert all(0.0 < metrics[f"chance/regdb/v2t/{m}"] <= 100.0 for m in METRICS)
    assert metrics["chance/regdb/v2t/rank1"] < metrics["chance/regdb/v2t/rank20"] == 100.0
    prov = metrics["provenance"]
    assert (prov["dataset"], prov["regdb_trial"], prov["protocol"]) == ("regdb", 1, "regdb/v2t@trial1")
    assert prov["shards_sha256"] == ShardSet(shards).manifest["sha256_total"]
    cmc = cmc_columns(tmp_path / "eval-regdb")
    assert list(cmc) == ["rank", "headline", "regdb/v2t", "regdb/t2v"]
    assert cmc["rank"] == [float(r) for r in range(1, 21)]
    assert cmc["headline"] == cmc["regdb/v2t"]
    for direction in ("v2t", "t2v"):
        curve = cmc[f"regdb/{direction}"]
        assert curve == sorted(curve) and 0.0 <= curve[0] and curve[-1] == 100.0  # percent
        # the curve is the one the metrics report (6 decimals in the CSV)
        for rank in (1, 5, 10, 20):
            assert curve[rank - 1] == pytest.approx(metrics[f"regdb/{direction}/rank{rank}"], abs=1e-6)


# ---------------------------------------------------------------------------------------
# the official SYSU sampler: eval.official_perm_path

#: hand-written permutation rows for the tiny gallery folders of 2 images (1-based, as in the
#: owners' kit): the single-shot gallery of trial t is the first entry of row t
FIRST = [[1, 2]] * 10  # every trial: each folder's first image
SECOND = [[2, 1]] * 10  # every trial: each folder's second image
ALTERNATING = [[1, 2], [2, 1]] * 5  # trial 0 as FIRST, trial 1 as SECOND


def gallery_folders(shards: Path) -> dict[tuple[int, int], int]:
    """(camera, identity) -> images in that folder of the shards' gallery pool."""
    table = ShardSet(shards).table("gallery")
    folders: dict[tuple[int, int], int] = {}
    for cam, ident in zip(table.camera.tolist(), table.identity.tolist(), strict=True):
        folders[(cam, ident)] = folders.get((cam, ident), 0) + 1
    return folders


def write_perm_file(path: Path, folders: Mapping[tuple[int, int], int], rows: list[list[int]]) -> Path:
    """A ``rand_perm_cam.mat`` laid out as the owners' kit: key ``rand_perm_cam``, a 6 x 1 cell
    (camera 1..6) of 1 x (max identity) cells holding each folder's ``rows`` (10 x N), empty
    where the camera does not see the identity."""
    top = max(ident for _, ident in folders)
    cells = np.empty((6, 1), dtype=object)
    for cam in range(6):
        row = np.empty((1, top), dtype=object)
        for i in range(top):
            row[0, i] = np.zeros((0, 0))
        cells[cam, 0] = row
    for cam, ident in folders:
        cells[cam - 1, 0][0, ident - 1] = np.asarray(rows, dtype=np.float64)  # MATLAB doubles
    scipy.io.savemat(path, {"rand_perm_cam": cells})
    return path


@pytest.fixture(scope="module")
def official(tiny_shards, model_file, tmp_path_factory) -> Callable[[str, list[list[int]]], dict[str, Any]]:
    """``run(name, rows)``: metrics.json of the stage with the official sampler reading a file
    ``<name>.mat`` of ``rows`` (each run once per module)."""
    shards, cfg = tiny_shards
    folders = gallery_folders(shards)
    assert set(folders.values()) == {2} and len(folders) == 8 * 4  # 8 test identities x cameras 1, 2, 4, 5
    base = tmp_path_factory.mktemp("official")
    done: dict[str, dict[str, Any]] = {}

    def run(name: str, rows: list[list[int]]) -> dict[str, Any]:
        if name not in done:
            perm = write_perm_file(base / f"{name}.mat", folders, rows)
            assert load_official_permutations(perm).perms[(1, 3)].tolist() == rows  # the layout read back
            done[name] = evaluate(base, name, cfg, model_file, shards, **SYSU_EVAL,
                                  sysu_sampler="official", official_perm_path=str(perm))
        return done[name]

    return run


def _trials(metrics: Mapping[str, Any]) -> list[dict[str, float]]:
    return [{k: v for k, v in t.items() if k != "trial"} for t in metrics["sysu/all/single"]["per_trial"]]


def test_official_sampler_takes_the_gallery_from_the_file(official) -> None:
    first, second = official("first", FIRST), official("second", SECOND)
    for metrics in (first, second):
        assert metrics["sysu/all/single"]["sampler"] == "official"
        assert metrics["provenance"]["sysu_sampler"] == "official"
        assert metrics["provenance"]["protocol"] == "sysu/all/single@official+trials2"  # eval.trials 2
    # rows that name the same images give the same gallery in both trials
    assert _trials(first)[0] == _trials(first)[1] and _trials(second)[0] == _trials(second)[1]
    # the other image of every folder: another gallery, other results
    assert _trials(first)[0] != _trials(second)[0]


def test_official_sampler_trial_t_reads_row_t(official) -> None:
    alternating = official("alternating", ALTERNATING)
    assert _trials(alternating) == [_trials(official("first", FIRST))[0],
                                    _trials(official("second", SECOND))[1]]


def test_identical_perm_files_give_identical_results(official) -> None:
    first, again = official("first", FIRST), official("first-copy", FIRST)
    assert {k: v for k, v in first.items() if k != "provenance"} == \
        {k: v for k, v in again.items() if k != "provenance"}
    assert first["provenance"] == again["provenance"]


def malformed_perm_file(case: str, folders: Mapping[tuple[int, int], int], path: Path) -> Path:
    """A permutation file at ``path`` that is wrong in the way ``case`` says."""
    if case == "not_a_mat_file":
        path.write_bytes(b"not a MAT file\n")
    elif case == "no_rand_perm_cam":
        scipy.io.savemat(path, {"x": np.zeros(3)})
    elif case == "permutes_3_of_2":  # a tree with 3 images per folder
        write_perm_file(path, folders, [[1, 2, 3]] * 10)
    elif case == "one_row_for_2_trials":
        write_perm_file(path, folders, [[1, 2]])
    elif case == "zero_based":
        write_perm_file(path, folders, [[0, 1]] * 10)
    else:
        assert case == "missing"
    return path


@pytest.mark.parametrize("case", [
    "missing",
    "not_a_mat_file",
    "no_rand_perm_cam",
    "permutes_3_of_2",
    "one_row_for_2_trials",
    "zero_based",
])
def test_malformed_perm_file_fails_with_one_line_naming_it(tiny_shards, model_file, tmp_path, capsys,
                                                           case: str) -> None:
    shards, cfg = tiny_shards
    perm = malformed_perm_file(case, gallery_folders(shards), tmp_path / f"{case}.mat")
    argv, out = stage_argv(tmp_path, case, cfg, model_file, shards,
                           {**SYSU_EVAL, "sysu_sampler": "official", "official_perm_path": str(perm)})
    capsys.readouterr()
    rc = run_entry(evaluate_stage.main, argv)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and " INFO " not in ln]
    assert not (out / "metrics.json").exists()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert str(perm) in lines[0]


def test_official_sampler_without_a_perm_file_is_a_config_error(tiny_shards, model_file, tmp_path,
                                                                capsys) -> None:
    shards, cfg = tiny_shards
    argv, out = stage_argv(tmp_path, "no-path", cfg, model_file, shards,
                           {**SYSU_EVAL, "sysu_sampler": "official", "official_perm_path": ""})
    capsys.readouterr()
    rc = run_entry(evaluate_stage.main, argv)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and " INFO " not in ln]
    assert rc == 2 and len(lines) == 1 and "eval.official_perm_path" in lines[0], lines
    assert not (out / "metrics.json").exists()


def test_another_models_evaluation_is_not_logged_into_the_pipeline_run(tiny_shards, model_file, tmp_path,
                                                                      monkeypatch) -> None:
    """Issue 25 item 2: ``evaluate --model other.pt`` in a project whose train stage recorded
    its MLflow run leaves that run alone (its eval tags describe the train stage's model);
    the train stage's own model.pt is logged there by default, as before."""
    import shutil

    from mlflow import MlflowClient

    from vireid.config import TrackConfig
    from vireid.tracking import resolve_target, run_record, start_pipeline_run
    from vireid.tracking.tags import TAG_EVAL_PREFIX

    shards, cfg = tiny_shards
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg_track = merged(config_to_dict(cfg), {"track": {"tracking_uri": uri}, "eval": SYSU_EVAL})
    params = params_file(tmp_path / "params.yaml", cfg_track)
    monkeypatch.chdir(tmp_path)
    target = resolve_target(TrackConfig(tracking_uri=uri), tmp_path)
    run_id = start_pipeline_run(target, config=cfg_track, git_commit="c", data_hash="", dataset="sysu",
                                protocol="", run_name="pipeline")
    (tmp_path / "outputs/train").mkdir(parents=True)
    (tmp_path / "outputs/train/mlflow_run.json").write_text(json.dumps(run_record(target, run_id, tmp_path)))
    client = MlflowClient(uri)

    def eval_tags() -> dict[str, str]:
        return {k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith(TAG_EVAL_PREFIX)}

    evaluate_stage.main(["--params", str(params), "--model", str(model_file), "--shards", str(shards),
                         "--out", str(tmp_path / "other")])
    assert (tmp_path / "other/metrics.json").is_file()
    assert eval_tags() == {} and client.get_run(run_id).data.metrics == {}

    shutil.copy(model_file, tmp_path / "outputs/train/model.pt")  # the train stage's own model
    evaluate_stage.main(["--params", str(params), "--shards", str(shards), "--out", str(tmp_path / "own")])
    assert eval_tags()[f"{TAG_EVAL_PREFIX}model_sha256"] == json.loads(
        (tmp_path / "own/metrics.json").read_text())["provenance"]["model_sha256"]
