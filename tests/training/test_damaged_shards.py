"""Issue 25 items 5 and 12: damaged shards or manifest reach the evaluate stage as one line
naming the file (exit code 2), not a pyarrow/KeyError traceback, and the refused evaluation
leaves no empty ``--out`` folder. Tiny shards and model of tests/training/conftest.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines import evaluate as evaluate_stage
from tests._params import params_file
from vireid.config import config_to_dict
from vireid.errors import run_entry


def _truncate_query_shard(shards: Path) -> Path:
    shard = shards / json.loads((shards / "manifest.json").read_text())["splits"]["query"]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard


def _manifest_without(key: str) -> Callable[[Path], Path]:
    def damage(shards: Path) -> Path:
        path = shards / "manifest.json"
        manifest = json.loads(path.read_text())
        if key in manifest:
            del manifest[key]
        else:
            del manifest["splits"][key]
        path.write_text(json.dumps(manifest))
        return path
    return damage


@pytest.mark.parametrize(("damage", "what"), [
    (_truncate_query_shard, "damaged shard ("),
    (_manifest_without("image_height"), "damaged shard manifest: key 'image_height' is missing, not a positive "
                                        "integer (rerun the prepare stage)"),
    (_manifest_without("query"), "split 'query' not in "),
], ids=["half-truncated-shard", "manifest-without-image_height", "manifest-without-query-split"])
def test_damaged_shards_are_one_line_and_leave_no_out_folder(tiny_shards, model_file, tmp_path, capsys,
                                                             damage, what) -> None:
    source, cfg = tiny_shards
    shards = tmp_path / "shards"
    shutil.copytree(source, shards)
    culprit = damage(shards)
    params = params_file(tmp_path / "params.yaml", config_to_dict(cfg))
    out = tmp_path / "eval" / "out"
    argv = ["--params", str(params), "--model", str(model_file), "--shards", str(shards), "--out", str(out),
            "--run-file", str(tmp_path / "no-run.json")]
    assert run_entry(evaluate_stage.main, argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if " INFO " not in ln]
    assert len(err) == 1 and err[0].startswith(f"error: {culprit}: ") and what in err[0], err
    assert not (tmp_path / "eval").exists()  # neither --out nor the parent it created
