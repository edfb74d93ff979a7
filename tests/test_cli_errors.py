"""Expected errors read as one line ``error: <file or key>: <what> (<hint>)`` and exit 2,
through the stage entry points (what ``dvc repro`` / ``make run`` run) and the ``vireid``
command; ``--debug`` / ``VIREID_DEBUG=1`` keep the traceback; a real bug keeps it too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests._params import params_file
from vireid.errors import error_line, run_entry

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
       "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
ENV.pop("VIREID_DEBUG", None)
REGDB = {"dataset": "regdb", "image_height": 64, "image_width": 32}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env or ENV, capture_output=True,
                          text=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line (log records of the stage aside), checked for rc 2 and shape."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and " INFO " not in ln]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def write_params(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def regdb_trial1_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny ``model.pt`` trained (well, initialised) for RegDB trial 1."""
    from vireid.config import Config, DataConfig, EvalConfig, ModelConfig, config_to_dict
    from vireid.modeling import VIReIDModel
    from vireid.training.checkpoint import make_meta, save_model

    cfg = Config(data=DataConfig(dataset="regdb", regdb_trial=1, image_height=64, image_width=32),
                 model=ModelConfig(arch="tiny", pretrained=False, memory_size=2),
                 eval=EvalConfig(headline="regdb/v2t/mAP"))
    model = VIReIDModel(cfg.model, num_classes=4)
    meta = make_meta(arch="tiny", num_classes=4, feat_dim=model.feat_dim, dataset="regdb", regdb_trial=1,
                     image_height=64, image_width=32, identity_map={"identities": [0, 1, 2, 3]},
                     config=config_to_dict(cfg))
    return save_model(tmp_path_factory.mktemp("m") / "model.pt", model.state_dict(), meta)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    params = write_params(tmp_path / "bad.yaml", "data:\n  dataset: sysu\n  root: [unclosed\n")
    line = one_line_error(run("-m", "pipelines.synth", "--params", str(params)))
    assert line.startswith(f"error: {params}:") and "not valid YAML" in line


def test_config_error_names_the_params_file_and_key(tmp_path: Path) -> None:
    params = params_file(tmp_path / "p.yaml", {"data": {"synth": {"sysu_identities": 3}}})
    line = one_line_error(run("-m", "pipelines.synth", "--params", str(params)))
    assert line.startswith(f"error: {params}: data.synth.sysu_identities: must be >= 12")


def test_debug_flag_and_env_keep_the_traceback(tmp_path: Path) -> None:
    params = params_file(tmp_path / "p.yaml", {"model": {"memory_size": 0}})
    proc = run("-m", "pipelines.synth", "--params", str(params), "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "model.memory_size" in proc.stderr
    proc = run("-m", "pipelines.synth", "--params", str(params), env={**ENV, "VIREID_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_dataset_error_names_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "SYSU-MM01"
    root.mkdir()
    params = params_file(tmp_path / "p.yaml", {"data": {"synthetic": False, "root": str(root)}})
    line = one_line_error(run("-m", "pipelines.prepare", "--params", str(params), "--out",
                              str(tmp_path / "shards")))
    assert str(root) in line and not (tmp_path / "shards").exists()


def test_checkpoint_errors_missing_and_folder(tmp_path: Path) -> None:
    params = params_file(tmp_path / "p.yaml", {"data": {"image_height": 64, "image_width": 32}})
    for model, what in ((tmp_path / "none.pt", "no such file"), (tmp_path, "is a folder")):
        line = one_line_error(run("-m", "pipelines.evaluate", "--params", str(params), "--model", str(model),
                                  "--out", str(tmp_path / "eval"), "--run-file", str(tmp_path / "r.json")))
        assert line.startswith(f"error: checkpoint {model}: {what}")


def test_trial_mismatch_names_the_model(tmp_path: Path, regdb_trial1_model: Path) -> None:
    params = params_file(tmp_path / "p.yaml", {"data": REGDB | {"regdb_trial": 2}, "eval": {"headline": "regdb/v2t/mAP"}})
    line = one_line_error(run("-m", "pipelines.evaluate", "--params", str(params), "--model",
                              str(regdb_trial1_model), "--out", str(tmp_path / "eval")))
    assert line.startswith(f"error: {regdb_trial1_model}: ") and "trial 1 cannot be tested on trial 2" in line


def test_corrupt_shard_manifest_is_a_dataset_error(tmp_path: Path, regdb_trial1_model: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text("{not json", encoding="utf-8")
    params = params_file(tmp_path / "p.yaml", {"data": REGDB, "eval": {"headline": "regdb/v2t/mAP"}})
    line = one_line_error(run("-m", "pipelines.evaluate", "--params", str(params), "--model",
                              str(regdb_trial1_model), "--shards", str(shards), "--out", str(tmp_path / "e")))
    assert line.startswith(f"error: {shards / 'manifest.json'}: unreadable shard manifest")


def test_missing_pretrained_weights_stop_train_before_ray(tmp_path: Path) -> None:
    params = params_file(tmp_path / "p.yaml", {"model": {"arch": "resnet18", "pretrained": True,
                                                         "weights_path": str(tmp_path / "r18.pth")}})
    line = one_line_error(run("-m", "pipelines.train", "--params", str(params), "--shards",
                              str(tmp_path / "s"), "--out", str(tmp_path / "o")))
    assert line.startswith("error: model.weights_path: ") and str(tmp_path / "r18.pth") in line


def test_register_without_metrics_is_one_line(tmp_path: Path, regdb_trial1_model: Path) -> None:
    params = params_file(tmp_path / "p.yaml", {"data": REGDB, "eval": {"headline": "regdb/v2t/mAP"},
                                               "track": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}})
    line = one_line_error(run("-m", "pipelines.register", "--params", str(params), "--model",
                              str(regdb_trial1_model), "--metrics", str(tmp_path / "metrics.json"),
                              "--out", str(tmp_path / "reg.json")))
    assert line.startswith(f"error: {tmp_path / 'metrics.json'}: no metrics.json")


def test_cli_stage_and_search_errors_are_one_line(tmp_path: Path) -> None:
    params = params_file(tmp_path / "p.yaml", {"eval": {"trials": 0}})
    line = one_line_error(run("-m", "vireid.cli", "synth", "--params", str(params)))
    assert line == f"error: {params}: eval.trials: must be in 1..10 (fix the key in the parameters file)"
    proc = run("-m", "vireid.cli", "synth", "--params", str(params), "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    line = one_line_error(run("-m", "vireid.cli", "search", str(tmp_path / "q.png"), "--gallery",
                              str(tmp_path), "--model", str(tmp_path / "m.pt")))
    assert "does not exist" in line


def test_run_entry_in_process(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def missing(_: list[str]) -> None:
        (tmp_path / "nope.txt").read_text()

    assert run_entry(missing, []) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.txt'}: No such file or directory (check the path given)\n"

    def bug(_: list[str]) -> None:
        raise KeyError("a real bug")

    with pytest.raises(KeyError):
        run_entry(bug, [])
    with pytest.raises(yaml.YAMLError):
        run_entry(lambda _: yaml.safe_load("a: [b"), ["--debug"])


def test_errors_raised_in_ray_workers_are_unwrapped() -> None:
    """Ray Train hands the driver a WorkerGroupError; the cause is reported."""
    from ray.train import ControllerError, WorkerGroupError

    from vireid.modeling.backbone import PretrainedWeightsError

    cause = PretrainedWeightsError("model.pretrained: could not obtain torchvision's ImageNet weights "
                                   "for resnet18 (URLError); put the file at model.weights_path")
    wrapped = WorkerGroupError("Training failed due to worker errors:\n[Rank 0]\nTraceback ...", {0: cause})
    assert error_line(wrapped) == f"error: {cause} (see model.weights_path)"
    assert error_line(ControllerError(wrapped)) == error_line(wrapped)
    assert error_line(RuntimeError(torch.__version__)) is None


def test_empty_params_file_and_missing_section_through_the_cli(tmp_path: Path) -> None:
    empty = write_params(tmp_path / "empty.yaml", "")
    line = one_line_error(run("-m", "vireid.cli", "synth", "--params", str(empty)))
    assert line.startswith(f"error: {empty}: is empty")
    params = yaml.safe_load(params_file(tmp_path / "p.yaml").read_text(encoding="utf-8"))
    del params["track"]
    no_track = write_params(tmp_path / "no_track.yaml", yaml.safe_dump(params))
    line = one_line_error(run("-m", "pipelines.synth", "--params", str(no_track)))
    assert line.startswith(f"error: {no_track}: no track section")


def test_interrupted_tune_search_is_one_line(capsys: pytest.CaptureFixture) -> None:
    from vireid.tuning.run import SearchIncomplete

    def tune(_: list[str]) -> None:
        raise SearchIncomplete("Tune experiment ray_results/tune/tune-ab: 3 of 6 trials finished "
                               "(interrupted); run again with the same parameters to resume it")

    assert run_entry(tune, []) == 2
    assert capsys.readouterr().err == ("error: Tune experiment ray_results/tune/tune-ab: 3 of 6 trials finished "
                                       "(interrupted); run again with the same parameters to resume it "
                                       "(finished trials are kept)\n")


@pytest.mark.parametrize(("code", "what"), [(30, "Read-only file system"), (28, "No space left on device")])
def test_unwritable_output_location_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, code: int,
                                                 what: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 25 item 8: an output location on a read-only (or full) volume -- synth's
    data.root, prepare's --out -- was an ``OSError: [Errno 30]`` traceback. The tests run as
    root on a writable disk, so the volume's refusal is made where every output folder is
    made: ``os.mkdir``."""
    import errno

    from pipelines import synth as synth_stage

    assert code in (errno.EROFS, errno.ENOSPC)
    params = params_file(tmp_path / "p.yaml", {"data": {"synthetic": True, "root": str(tmp_path / "ro" / "SYSU")}})
    real_mkdir = os.mkdir

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(code, what, str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refuse)
    assert run_entry(synth_stage.main, ["--params", str(params)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if " INFO " not in ln and " WARNING " not in ln]
    assert err == [f"error: {tmp_path / 'ro'}: {what} (write the outputs somewhere writable: another --out "
                   "or data.root)"]


def test_ray_start_up_failure_is_one_line(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 25 item 11: a local Ray that times out while starting under load was a traceback
    (exit 1); joining a cluster that is not there too."""
    import ray

    from vireid import ray_session

    def timed_out(*args: object, **kwargs: object) -> None:
        raise Exception("The current node timed out during startup. This could happen because some of the "
                        "Ray processes failed to startup.")

    monkeypatch.setattr(ray, "init", timed_out)
    monkeypatch.setattr(ray, "shutdown", lambda: None)

    def start(address: str) -> None:
        with ray_session.ray_session(address, num_cpus=1):
            raise AssertionError("Ray did not start: the block must not run")

    assert run_entry(lambda _: start(""), []) == 2
    assert capsys.readouterr().err == (
        "error: Ray: the local instance did not start (The current node timed out during startup. This could "
        "happen because some of the Ray processes failed to startup.) (the machine may be overloaded: rerun "
        "when it is quieter, or lower train.num_workers / cpus_per_worker; Ray's logs: "
        "/tmp/ray/session_latest/logs)\n")
    assert run_entry(lambda _: start("10.0.0.1:6379"), []) == 2
    assert capsys.readouterr().err.startswith("error: train.ray_address: could not join the Ray cluster at "
                                              "10.0.0.1:6379 (The current node timed out")
