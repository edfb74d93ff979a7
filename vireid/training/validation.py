"""Validation on the held-out training identities (model selection; never the test set)."""

from __future__ import annotations

import numpy as np
import torch

from vireid.config import Config
from vireid.data.sample import Modality
from vireid.data.shards import ShardTable
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


def validate(model: VIReIDModel, table: ShardTable, cfg: Config, device: torch.device) -> dict[str, float]:
    """mAP/Rank-1/mINP on the held-out identities, both directions (see :data:`VAL_PROTOCOL`).

    ``val_*``: infrared query -> visible gallery; ``val_v2i_*``: visible -> infrared.
    """
    vis = np.flatnonzero(table.modality == Modality.VISIBLE.code)
    ir = np.flatnonzero(table.modality == Modality.INFRARED.code)
    if len(vis) == 0 or len(ir) == 0:
        raise ValueError("validation split needs visible and infrared images")
    size = (cfg.data.image_height, cfg.data.image_width)
    f_vis, f_ir = (table_features(model, table, image_size=size, device=device, batch_size=VAL_BATCH_SIZE,
                                  flip=VAL_FLIP, rows=rows) for rows in (vis, ir))
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
