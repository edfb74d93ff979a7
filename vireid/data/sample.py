"""The one record every dataset reader produces, with its modality names and codes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Modality(StrEnum):
    """Imaging modality of a sample. The integer code is what tensors and shards carry."""

    VISIBLE = "visible"
    INFRARED = "infrared"

    @property
    def code(self) -> int:
        """0 for visible, 1 for infrared (index of the modality-specific stem)."""
        return 0 if self is Modality.VISIBLE else 1

    @classmethod
    def from_code(cls, code: int) -> Modality:
        return cls.VISIBLE if int(code) == 0 else cls.INFRARED


#: Modality name -> the integer code tensors, shards and the exported model carry.
MODALITY_CODES: dict[str, int] = {m.value: m.code for m in Modality}  # {"visible": 0, "infrared": 1}


@dataclass(frozen=True, slots=True)
class Sample:
    """One image of one person.

    The record contract, stated once for every reader:
    - ``path``: path of the image relative to the dataset root, with ``/`` separators
      (e.g. ``cam3/0006/0001.jpg`` or ``Thermal/12/female_back_t_00001_12.bmp``).
    - ``identity``: the dataset's own identity number (SYSU folder number, RegDB label),
      never a relabelled index; relabelling to 0..C-1 lives in an ``IdentityMap``.
    - ``camera``: the dataset's camera number (SYSU 1..6; RegDB 1 = visible, 2 = thermal).
    - ``modality``: visible or infrared (thermal counts as infrared).
    - ``split``: which part of the protocol the sample belongs to
      (``train``, ``val``, ``query``, ``gallery`` or ``test``).
    """

    path: str
    identity: int
    camera: int
    modality: Modality
    split: str
