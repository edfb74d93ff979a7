"""Training refuses shards prepared for another dataset, image size or RegDB trial than the
parameters say (:func:`vireid.training.loop.check_shards`, run by every Trainer: each Ray
worker of the train stage builds one), naming the key and the shards' manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vireid.config import Config, replace
from vireid.errors import error_line
from vireid.evaluation.provenance import ShardMismatchError
from vireid.training.loop import Trainer, check_shards

REGDB_HEADLINE = {"headline": "regdb/v2t/mAP"}


def _refused(cfg: Config, shards: Path) -> ValueError:
    with pytest.raises(ValueError) as err:
        Trainer(cfg, shards)
    assert type(err.value) is ShardMismatchError  # an expected error: one line, exit 2 (vireid.errors)
    return err.value


@pytest.mark.parametrize(
    ("sections", "key", "found", "wanted"),
    [
        ({"data": {"dataset": "regdb"}, "eval": REGDB_HEADLINE}, "dataset", "'sysu'", "'regdb'"),
        ({"data": {"image_height": 128}}, "image_height", "64", "128"),
        ({"data": {"image_width": 48}}, "image_width", "32", "48"),
    ],
)
def test_sysu_shards_of_another_dataset_or_size_are_refused(tiny_shards, sections: dict[str, Any],
                                                            key: str, found: str, wanted: str) -> None:
    shards, cfg = tiny_shards
    err = _refused(replace(cfg, **sections), shards)
    assert str(err) == (f"shards {shards / 'manifest.json'}: {key} is {found} but data.{key} is {wanted}; "
                        "rerun the prepare stage")


def test_regdb_shards_of_another_trial_or_dataset_are_refused(tiny_regdb) -> None:
    shards, cfg = tiny_regdb
    manifest = shards / "manifest.json"
    err = _refused(replace(cfg, data={"regdb_trial": 2}), shards)
    assert str(err).startswith(f"shards {manifest}: regdb_trial is 1 but data.regdb_trial is 2;")
    err = _refused(replace(cfg, data={"dataset": "sysu"}, eval={"headline": "sysu/all/single/mAP"}), shards)
    assert str(err).startswith(f"shards {manifest}: dataset is 'regdb' but data.dataset is 'sysu';")


def test_matching_shards_are_accepted(tiny_shards, tiny_regdb) -> None:
    sysu_shards, sysu_cfg = tiny_shards
    regdb_shards, regdb_cfg = tiny_regdb
    check_shards(regdb_cfg, Trainer(regdb_cfg, regdb_shards).shards)
    # the RegDB trial is not a SYSU-MM01 key: another value does not matter to SYSU shards
    other_trial = replace(sysu_cfg, data={"regdb_trial": 3})
    assert Trainer(other_trial, sysu_shards).shards.manifest["regdb_trial"] is None


def test_refused_shards_read_as_one_line_error(tiny_shards) -> None:
    shards, cfg = tiny_shards
    err = _refused(replace(cfg, data={"image_height": 128}), shards)
    line = error_line(err)
    assert line is not None and line.startswith(f"error: shards {shards / 'manifest.json'}: image_height")
