"""train.validate_every > 1: held-out validation runs on every validate_every-th epoch and the
last one only, and model selection chooses among those epochs only (in the Trainer, and in
the export the train stage makes from the last checkpoint: model.pt, train_summary.json,
history.csv). No Ray: the Trainer is what each Ray worker runs, and the export functions are
the ones :func:`vireid.training.ray_train.fit` calls on the checkpointed state."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from vireid.config import Config, replace
from vireid.training import loop
from vireid.training.checkpoint import (
    cpu_state_dict,
    load_train_state,
    read_model_file,
    selected_from_state,
)
from vireid.training.loop import VAL_MEAN, Trainer, running_val_mean
from vireid.training.loop import training_summary as summarize
from vireid.training.ray_train import write_history_csv

#: the val_mAP each epoch's validation reports (scripted): the best values are on epochs that
#: must not be validated, so selecting among all epochs would pick one of those
SCRIPTED_MAP = {1: 0.90, 2: 0.30, 3: 0.95, 4: 0.50, 5: 0.40}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("epochs", "every", "validated", "selected"),
    [
        (5, 2, [2, 4, 5], 4),  # epochs 2 and 4, and the last; 4 has the best of 0.30, 0.50, 0.40
        (3, 5, [3], 3),  # validate_every beyond the run: the last epoch only
    ],
)
def test_validation_only_on_its_epochs_and_selection_among_them(
        tiny_shards: tuple[Path, Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        epochs: int, every: int, validated: list[int], selected: int) -> None:
    shards, base = tiny_shards
    cfg = replace(base, train={"epochs": epochs, "validate_every": every})
    trainer = Trainer(cfg, shards)
    real_validate = loop.validate
    calls: list[int] = []

    def scripted(model: Any, table: Any, cfg: Config, device: torch.device) -> dict[str, float]:
        epoch = trainer.epoch  # run_epoch has counted the epoch when it validates
        calls.append(epoch)
        assert table is trainer.val_table  # the held-out identities, not the test split
        return real_validate(model, table, cfg, device) | {"val_mAP": SCRIPTED_MAP[epoch]}

    monkeypatch.setattr(loop, "validate", scripted)
    weights: dict[int, dict[str, torch.Tensor]] = {}
    for _ in range(epochs):
        trainer.run_epoch()
        weights[trainer.epoch] = cpu_state_dict(trainer.model)
    assert calls == validated
    if selected != epochs:  # the selected weights are not merely the last ones
        assert not _equal(weights[selected], weights[epochs])

    # the history: validation columns in the validated epochs' records only
    assert [r["epoch"] for r in trainer.history] == list(range(1, epochs + 1))
    warmup = cfg.train.warmup_epochs
    for r in trainer.history:
        has_val = {k for k in ("val_mAP", "val_rank1", "val_v2i_mAP", "val_seconds", VAL_MEAN) if k in r}
        assert has_val == (set() if r["epoch"] not in validated else
                           {"val_mAP", "val_rank1", "val_v2i_mAP", "val_seconds", VAL_MEAN}), r
        if r["epoch"] in validated:
            assert r["val_mAP"] == SCRIPTED_MAP[r["epoch"]] and 0.0 <= r["val_rank1"] <= 1.0
            # the tune stage's judgment: mean val_mAP of the validated epochs after the warm-up
            start = warmup if r["epoch"] > warmup else 0
            window = [SCRIPTED_MAP[e] for e in validated if start < e <= r["epoch"]]
            assert r[VAL_MEAN] == pytest.approx(sum(window) / len(window))

    # the selection, in the trainer ...
    assert trainer.best is not None and trainer.best.epoch == selected
    assert _equal(trainer.best.model, weights[selected])

    # ... and in what the train stage exports from the last checkpoint (as fit does)
    state = load_train_state(trainer.save_state(tmp_path / "train_state.pt"), **trainer.expected())
    exported, meta = selected_from_state(state)
    assert meta["selected_epoch"] == selected and _equal(exported, weights[selected])
    assert meta["val_metrics"]["val_mAP"] == SCRIPTED_MAP[selected]
    model = read_model_file(trainer.save_model(tmp_path / "model.pt"))
    assert model["meta"]["selected_epoch"] == selected and _equal(model["model"], weights[selected])

    summary = summarize(state["history"], meta)
    assert summary["epochs"] == epochs and summary["selected_epoch"] == selected
    assert summary["val_metrics"] == next(
        {k: v for k, v in r.items() if k.startswith("val_") and k not in ("val_seconds", VAL_MEAN)}
        for r in trainer.history if r["epoch"] == selected)

    with write_history_csv(tmp_path / "history.csv", state["history"]).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert [int(r["epoch"]) for r in rows if r["val_mAP"] != ""] == validated
    assert {int(r["epoch"]): float(r["val_mAP"]) for r in rows if r["val_mAP"]} == \
        {e: SCRIPTED_MAP[e] for e in validated}


def test_running_val_mean_counts_from_the_end_of_the_warm_up() -> None:
    history = [{"epoch": 1, "val_mAP": 0.9}, {"epoch": 2, "val_mAP": 0.1}, {"epoch": 3},
               {"epoch": 4, "val_mAP": 0.3}]
    # during the warm-up (2 epochs): the warm-up epochs so far
    assert running_val_mean(history[:1], 0.1, 2, warmup_epochs=2) == pytest.approx(0.5)
    # after it: only epochs 3.. (3 was not validated), this epoch included
    assert running_val_mean(history, 0.5, 5, warmup_epochs=2) == pytest.approx((0.3 + 0.5) / 2)
    assert running_val_mean([], 0.7, 1, warmup_epochs=0) == 0.7
    # a restored history that already holds later epochs (never in a live run) is not counted twice
    assert running_val_mean(history, 0.3, 4, warmup_epochs=2) == pytest.approx(0.3)
