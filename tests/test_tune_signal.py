"""bench/tune_signal.py's statistics (issue #23's signal study): F, Kendall's W and the
resolvable difference on values whose answer is known."""

from __future__ import annotations

import math

import pytest

from tests._bench import load_bench

ts = load_bench("tune_signal")


def test_configurations_far_apart_give_a_large_f_and_full_agreement() -> None:
    values = {"a": {0: 0.10, 1: 0.11, 2: 0.12}, "b": {0: 0.30, 1: 0.31, 2: 0.32}}
    fig = ts.signal(values)
    assert fig["means"] == pytest.approx({"a": 0.11, "b": 0.31})
    assert fig["sd_within"] == pytest.approx(0.01)
    # MS_between = n * var(means) = 3 * 0.02 = 0.06; MS_within = 1e-4
    assert fig["F"] == pytest.approx(600.0)
    assert fig["kendall_W"] == pytest.approx(1.0)  # every seed ranks b above a
    assert fig["resolvable_difference"] == pytest.approx(1.96 * math.sqrt(2) * 0.01)


def test_seed_noise_without_a_difference_gives_f_below_one_and_no_agreement() -> None:
    # the same three values per configuration, permuted: equal means, opposite rankings
    values = {"a": {0: 0.1, 1: 0.2, 2: 0.3}, "b": {0: 0.3, 1: 0.1, 2: 0.2}, "c": {0: 0.2, 1: 0.3, 2: 0.1}}
    fig = ts.signal(values)
    assert fig["sd_between_means"] == pytest.approx(0.0, abs=1e-12) and fig["F"] == pytest.approx(0.0, abs=1e-9)
    assert fig["kendall_W"] == pytest.approx(0.0)


def test_rules_read_the_curve_and_unpaired_seeds_are_refused() -> None:
    run = {"curve": [{"epoch": e, "val_mAP": v, "val_v2i_mAP": v / 2} for e, v in
                     enumerate([0.1, 0.2, 0.3, 0.6, 0.4, 0.5], 1)],
           "last": {"mAP": 7.0}, "selected": {"mAP": 8.0}}
    judged = {name: rule(run) for name, rule in ts.rules(warmup_epochs=3).items()}
    assert judged["last"] == 0.5 and judged["best"] == 0.6
    assert judged["mean_last3"] == pytest.approx(0.5) and judged["mean_after_warmup"] == pytest.approx(0.5)
    assert judged["both_directions_last3"] == pytest.approx(0.375)
    assert (judged["test_last"], judged["test_selected"]) == (0.07, 0.08)
    with pytest.raises(ValueError, match="same >= 2 seeds"):
        ts.signal({"a": {0: 0.1, 1: 0.2}, "b": {0: 0.1, 2: 0.2}})
