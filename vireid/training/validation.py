"""Validation on the held-out training identities (model selection; never the test set).

With data-parallel ranks every rank extracts the features of its share of the images
(every ``world``-th row), the shares are gathered in one collective per modality, and rank 0
computes the metrics: the other ranks no longer wait while rank 0 alone runs the whole set.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from vireid.config import Config
from vireid.data.sample import Modality
from vireid.data.shards import ShardTable
from vireid.distributed import all_gather_rows, world_size
from vireid.evaluation.extract import table_features
from vireid.evaluation.metrics import evaluate_features
from vireid.modeling import VIReIDModel

VAL_PROTOCOL = (
    "held-out training identities (split 'val', data.holdout_identities; never the test set): "
    "val_* = infrared queries against the visible gallery, val_v2i_* = visible queries against "
    "the infrared gallery; every image, no flip, no camera removal, standard CMC; values are "
    "fractions in [0, 1]"
)
# validation feature extraction: fixed, so that training does not depend on the eval section
VAL_BATCH_SIZE = 128
VAL_FLIP = False
VAL_QUERY_CHUNK = 1024


def shared_features(model: VIReIDModel, table: ShardTable, rows: np.ndarray, cfg: Config,
                    device: torch.device) -> np.ndarray:
    """Features ``[len(rows), d]`` of ``table``'s ``rows``, in that order, extracted by all
    data-parallel ranks together: rank r takes ``rows[r::world]``, padded to the same count
    on every rank (the same number of batches, one equal-size gather), then each rank holds
    all rows. Without a process group: all rows here."""
    size = (cfg.data.image_height, cfg.data.image_width)
    world = world_size()
    rank = dist.get_rank() if world > 1 else 0

    def extract(part: np.ndarray) -> np.ndarray:
        return table_features(model, table, image_size=size, device=device, batch_size=VAL_BATCH_SIZE,
                              flip=VAL_FLIP, rows=part)

    if world == 1:
        return extract(rows)
    per = math.ceil(len(rows) / world)
    mine = rows[rank::world]
    padded = np.concatenate([mine, np.repeat(rows[-1:], per - len(mine))])  # same count on every rank
    local = torch.from_numpy(extract(padded)).to(device)  # [per, d]
    gathered = all_gather_rows(local, per).cpu().numpy()  # [world * per, d], rank-major
    out = np.empty((len(rows), gathered.shape[1]), dtype=gathered.dtype)
    for r in range(world):
        n = len(range(r, len(rows), world))
        out[r::world] = gathered[r * per: r * per + n]
    return out


def validate(model: VIReIDModel, table: ShardTable, cfg: Config, device: torch.device) -> dict[str, float]:
    """mAP/Rank-1/mINP on the held-out identities, both directions (see :data:`VAL_PROTOCOL`).

    ``val_*``: infrared query -> visible gallery; ``val_v2i_*``: visible -> infrared. Called by
    every data-parallel rank (the features are extracted together, :func:`shared_features`);
    rank 0 returns the metrics, the others ``{}``.
    """
    vis = np.flatnonzero(table.modality == Modality.VISIBLE.code)
    ir = np.flatnonzero(table.modality == Modality.INFRARED.code)
    if len(vis) == 0 or len(ir) == 0:
        raise ValueError("validation split needs visible and infrared images")
    f_vis, f_ir = (shared_features(model, table, rows, cfg, device) for rows in (vis, ir))
    if world_size() > 1 and dist.get_rank() != 0:
        return {}
    ids, cams = table.identity, table.camera
    out: dict[str, float] = {}
    for prefix, (qf, qi, gf, gi) in {"val": (f_ir, ir, f_vis, vis),
                                      "val_v2i": (f_vis, vis, f_ir, ir)}.items():
        r = evaluate_features(qf, gf, ids[qi], ids[gi], cams[qi], cams[gi], sysu_removal=False,
                              unique_ids_cmc=False, chunk=VAL_QUERY_CHUNK)
        s = r.summary()
        out.update({f"{prefix}_mAP": s["mAP"], f"{prefix}_rank1": s["rank1"],
                    f"{prefix}_mINP": s["mINP"]})
    return out
