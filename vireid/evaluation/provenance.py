"""What an evaluation was made of, so that only comparable evaluations are compared.

:func:`check_shards_for_model` refuses to test a model on shards whose files are not what their
manifest records, or that are not the ones its split was made from (another dataset, another
RegDB trial -- read from the shards' manifest, not from the parameters --, other shard
contents, or test identities it trained on).
:func:`provenance` is the ``provenance`` object of ``metrics.json``::

    {"model_sha256": ..,      # sha256 of the model.pt file evaluated
     "shards_sha256": ..,     # the manifest's sha256_total (the shard contents): the data hash
     "manifest_sha256": ..,   # sha256 of manifest.json itself
     "dataset": "sysu" | "regdb", "data_kind": "synthetic" | "real" | "unknown",
     "source_root": ..,       # the raw tree the shards were prepared from
     "regdb_trial": int | None,  # from the shards' manifest
     "protocol": "sysu/all/single@community", "headline": "sysu/all/single/mAP",
     "sysu_sampler": .., "rerank": .., "trials": .., "flip": ..}

The registry compares a challenger with the champion only when ``shards_sha256`` and
``protocol`` agree (:mod:`vireid.tracking.registry`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vireid.data.shards import verify_shards
from vireid.evaluation.regdb import TrialMismatchError
from vireid.io import sha256_file as file_sha256

PROVENANCE_KEY = "provenance"


class ShardMismatchError(ValueError):
    """The shards are not the ones the model's split was made from; names the manifest."""


def data_kind(manifest: Mapping[str, Any]) -> str:
    """``synthetic`` / ``real`` as the prepare stage recorded it, else ``unknown``."""
    kind = (manifest.get("extra") or {}).get("data_kind")
    return kind if kind in ("synthetic", "real") else "unknown"


def check_shards_for_model(meta: Mapping[str, Any], manifest: Mapping[str, Any],
                           manifest_path: str | os.PathLike[str], *, model_path: str | os.PathLike[str],
                           test_identities: Iterable[int]) -> None:
    """Refuse shards that are not what their manifest says, or that the model's split was not
    made from.

    In order: every shard file against its sha256 in the manifest (:func:`verify_shards`, a
    :class:`DatasetError` naming the file: the manifest's ``sha256_total`` is the data hash
    the registry compares, so it must be what the files hold); the dataset; for RegDB the
    trial of the shards' manifest against the model's (:class:`TrialMismatchError`); the
    shard contents (``shards_sha256`` of the model's metadata against the manifest's
    ``sha256_total``, when the model records it); and, in any case, the test identities
    against the model's training identities.
    """
    where = Path(manifest_path)
    verify_shards(where.parent, manifest)
    if manifest.get("dataset") != meta.get("dataset"):
        raise ShardMismatchError(f"{where}: shards of dataset {manifest.get('dataset')!r}, but "
                                 f"{model_path} was trained on {meta.get('dataset')!r}")
    if meta.get("dataset") == "regdb" and manifest.get("regdb_trial") != meta.get("regdb_trial"):
        raise TrialMismatchError(
            f"{where}: shards of RegDB trial {manifest.get('regdb_trial')}, but {model_path} was "
            f"trained on trial {meta.get('regdb_trial')}: its training identities would be among the "
            f"test images (evaluate with the trial-{meta.get('regdb_trial')} shards)")
    trained_on = meta.get("shards_sha256")
    if trained_on and trained_on != manifest.get("sha256_total"):
        raise ShardMismatchError(
            f"{where}: shard contents {str(manifest.get('sha256_total'))[:12]}, but {model_path} was "
            f"trained on shards {str(trained_on)[:12]} (rerun train on these shards, or evaluate "
            "with the shards it was trained on)")
    trained_ids = {int(i) for i in (meta.get("identity_map") or {}).get("identities", [])}
    leaked = sorted(trained_ids & {int(i) for i in test_identities})
    if leaked:
        raise ShardMismatchError(
            f"{where}: {len(leaked)} test identities ({', '.join(map(str, leaked[:5]))}"
            f"{', ...' if len(leaked) > 5 else ''}) are identities {model_path} was trained on "
            "(evaluate with the shards its split was made from)")


def provenance(*, model_path: str | os.PathLike[str], manifest: Mapping[str, Any],
               manifest_path: str | os.PathLike[str], protocol: str, headline: str,
               sysu_sampler: str, rerank: bool, trials: int, flip: bool) -> dict[str, Any]:
    """The ``provenance`` object of ``metrics.json`` (module docstring)."""
    return {
        "model_sha256": file_sha256(model_path),
        "shards_sha256": str(manifest.get("sha256_total") or ""),
        "manifest_sha256": file_sha256(manifest_path),
        "dataset": manifest.get("dataset"),
        "data_kind": data_kind(manifest),
        "source_root": manifest.get("source_root"),
        "regdb_trial": manifest.get("regdb_trial"),
        "protocol": protocol,
        "headline": headline,
        "sysu_sampler": sysu_sampler,
        "rerank": bool(rerank),
        "trials": int(trials),
        "flip": bool(flip),
    }
