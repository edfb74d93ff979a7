"""IdentityMap labels and round trip; identity-disjoint, deterministic hold-out."""

from __future__ import annotations

import numpy as np
import pytest

from vireid.data.identity import IdentityMap, holdout_split
from vireid.data.sample import Modality, Sample


def _samples() -> list[Sample]:
    out = []
    for ident in (40, 7, 13, 2, 99, 5):
        for k, mod in enumerate((Modality.VISIBLE, Modality.INFRARED, Modality.VISIBLE)):
            if ident == 99 and mod is Modality.INFRARED:
                continue  # 99 has no infrared image: never held out
            out.append(Sample(f"cam{1 + k}/{ident:04d}/{k}.jpg", ident, 1 + k, mod, "train"))
    return out


def test_identity_map_labels_and_json() -> None:
    m = IdentityMap([40, 7, 13, 7, 2])
    assert m.identities == (2, 7, 13, 40) and len(m) == 4
    assert [m.label(i) for i in (2, 7, 13, 40)] == [0, 1, 2, 3]
    assert m.identity(2) == 13 and 13 in m and 14 not in m
    np.testing.assert_array_equal(m.labels([40, 2, 2]), [3, 0, 0])
    assert IdentityMap.from_json(m.to_json()) == m
    with pytest.raises(KeyError, match="identity 14"):
        m.label(14)
    with pytest.raises(KeyError, match="label 4"):
        m.identity(4)
    with pytest.raises(ValueError, match="sorted and unique"):
        IdentityMap.from_dict({"identities": [3, 1]})


def test_holdout_split_whole_identities_deterministic() -> None:
    samples = _samples()
    train, val = holdout_split(samples, 2, seed=1)
    held = {s.identity for s in val}
    assert len(held) == 2 and 99 not in held
    assert held.isdisjoint({s.identity for s in train})
    assert len(train) + len(val) == len(samples)
    assert {s.split for s in val} == {"val"} and {s.split for s in train} == {"train"}
    assert [s.path for s in train] == [s.path for s in samples if s.identity not in held]  # order kept
    assert holdout_split(samples, 2, seed=1) == (train, val)
    draws = {frozenset(s.identity for s in holdout_split(samples, 2, seed=k)[1]) for k in range(10)}
    assert len(draws) > 1  # the seed matters
    assert holdout_split(samples, 0, seed=1) == (samples, [])
    with pytest.raises(ValueError, match="cannot hold out 6"):
        holdout_split(samples, 6, seed=0)
