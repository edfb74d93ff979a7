"""Dataset identity <-> training label, and identity-disjoint hold-out splits."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vireid.data.sample import Modality, Sample


class IdentityMap:
    """Sorted dataset identities mapped to labels 0..C-1 (the classifier's rows)."""

    def __init__(self, identities: Iterable[int]) -> None:
        self.identities: tuple[int, ...] = tuple(sorted({int(i) for i in identities}))
        self._label = {ident: k for k, ident in enumerate(self.identities)}

    @classmethod
    def from_samples(cls, samples: Iterable[Sample]) -> IdentityMap:
        return cls(s.identity for s in samples)

    def __len__(self) -> int:
        return len(self.identities)

    def __contains__(self, identity: object) -> bool:
        return identity in self._label

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdentityMap) and other.identities == self.identities

    def __hash__(self) -> int:
        return hash(self.identities)

    def __repr__(self) -> str:
        return f"IdentityMap({len(self)} identities)"

    def label(self, identity: int) -> int:
        """Label of a dataset identity; KeyError names an unknown identity."""
        try:
            return self._label[int(identity)]
        except KeyError:
            raise KeyError(f"identity {identity} is not in the identity map") from None

    def identity(self, label: int) -> int:
        """Dataset identity of a label 0..C-1."""
        if not 0 <= int(label) < len(self.identities):
            raise KeyError(f"label {label} is outside 0..{len(self.identities) - 1}")
        return self.identities[int(label)]

    def labels(self, identities: Iterable[int]) -> np.ndarray:
        """Vectorised :meth:`label`: int64 [N]."""
        return np.asarray([self.label(i) for i in identities], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        """``{"identities": [...]}``: label k is the k-th entry."""
        return {"identities": list(self.identities)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IdentityMap:
        ids = [int(i) for i in data["identities"]]
        if ids != sorted(set(ids)):
            raise ValueError("identity map: identities must be sorted and unique")
        return cls(ids)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> IdentityMap:
        return cls.from_dict(json.loads(text))


def holdout_split(samples: Sequence[Sample], n: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold ``n`` whole identities out of ``samples`` for model selection.

    The held-out identities are drawn (``random.Random(seed)``) among the identities that
    have both modalities, so the validation set can run a cross-modality search. Returns
    ``(train, val)`` in the input order; val samples get split ``"val"``.
    """
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    if n == 0:
        return list(samples), []
    mods: dict[int, set[Modality]] = {}
    for s in samples:
        mods.setdefault(s.identity, set()).add(s.modality)
    both = sorted(i for i, m in mods.items() if len(m) == 2)
    if n > len(both) or n >= len(mods):
        raise ValueError(f"n: cannot hold out {n} identities: {len(mods)} identities, "
                         f"{len(both)} with both modalities, at least one must stay for training")
    held = set(random.Random(seed).sample(both, n))
    train = [s for s in samples if s.identity not in held]
    val = [dataclasses.replace(s, split="val") for s in samples if s.identity in held]
    return train, val
