"""Reading e of docs/method.md: kd (and infer) join after loss.distill_start of the epochs."""

from __future__ import annotations

from dataclasses import replace

from vireid.training.loop import Trainer, late_terms_epoch


def test_late_terms_start_at_the_fraction_of_the_epochs(tiny_shards) -> None:
    shards, cfg = tiny_shards
    cfg = replace(cfg, loss=replace(cfg.loss, distill_start=0.5), train=replace(cfg.train, epochs=2))
    assert late_terms_epoch(cfg) == 1
    assert late_terms_epoch(replace(cfg, train=replace(cfg.train, epochs=5))) == 3  # 2.5 rounded up
    trainer = Trainer(cfg, shards)
    first, second = trainer.run_epoch(), trainer.run_epoch()
    assert "kd" not in first and "kd" in second and second["kd"] >= 0.0
