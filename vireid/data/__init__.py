"""Datasets: readers, synthetic generator, Arrow shards, sampler, transforms."""

from vireid.data.errors import DatasetError
from vireid.data.sample import Modality, Sample

__all__ = ["DatasetError", "Modality", "Sample"]
