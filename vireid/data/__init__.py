"""Datasets: readers, synthetic generator, Arrow shards, sampler, transforms."""

from vireid.data._paths import IMAGE_SUFFIXES
from vireid.data.errors import DatasetError
from vireid.data.sample import MODALITY_CODES, Modality, Sample

__all__ = ["IMAGE_SUFFIXES", "MODALITY_CODES", "DatasetError", "Modality", "Sample"]
