"""Which loss term drives the shared layers: per-term gradient norms and directions.

Trains the full method (``params.yaml`` as it is, single process, the pipeline's ``Trainer``)
and, after the epochs given by ``--at``, measures on ``--batches`` fixed training batches
(train mode, the sampler's layout, no optimiser step) for every named loss term:

- ``norm``: the L2 norm of its weighted gradient on the **shared** parameters (layer1..layer4
  and the non-local blocks; not the stems, the neck or the classifiers);
- ``cos_base``: the cosine between its gradient and the baseline's gradient (``id + tri``,
  what AGW trains with) on the same parameters; negative: it pulls the shared layers
  against the baseline's objective;
- ``share``: its norm over the sum of all terms' norms.

Also reports ``val_mAP`` (infrared query -> visible gallery, held-out identities) and the
same-modality retrieval of the held-out identities (visible -> visible, other camera), to
tell a modality gap from a lack of identity features.

    uv run python bench/loss_gradients.py --shards data/shards --at 1 5 10 20 40 \
        --json bench/results/loss_gradients_cpu.json

``--model outputs/train/model.pt`` measures a trained model (the train stage's selected
weights, memory included) once instead of training, under the ``model`` and ``loss`` settings
it was trained with (its metadata's config; ``--params`` gives the rest), every term on
(``kd`` and ``infer`` included where ``loss.distill_start`` delayed them): a model kept by
``bench/ablation.py --keep`` is measured as its configuration trains, not as params.yaml's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vireid.config import Config, config_from_dict, replace  # noqa: E402
from vireid.data.sample import Modality  # noqa: E402
from vireid.evaluation.extract import table_features  # noqa: E402
from vireid.evaluation.metrics import evaluate_features  # noqa: E402
from vireid.training.checkpoint import read_model_file  # noqa: E402
from vireid.training.loop import Trainer  # noqa: E402
from vireid.training.validation import VAL_BATCH_SIZE, VAL_FLIP, validate  # noqa: E402


def shared_parameters(trainer: Trainer) -> list[torch.nn.Parameter]:
    """Parameters of the shared trunk (layer1..layer4, non-local blocks included)."""
    bb = trainer.model.backbone
    return [p for layer in (bb.layer1, bb.layer2, bb.layer3, bb.layer4) for p in layer.parameters()
            if p.requires_grad]


def term_gradients(trainer: Trainer, batches: list[dict[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """Per-term weighted gradient on the shared parameters, summed over ``batches``: norm,
    cosine to the baseline's (id + tri) gradient and share of the summed norms."""
    params = shared_parameters(trainer)
    task, weights = trainer.task, trainer.cfg.loss.weights
    task.train()
    grads: dict[str, torch.Tensor] = {}
    state_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}  # BN stats
    for b in batches:
        losses, _ = task(b["image"], b["label"].long(), b["modality"].long())
        names = list(losses)
        for i, name in enumerate(names):
            g = torch.autograd.grad(getattr(weights, name) * losses[name].float(), params,
                                    retain_graph=i < len(names) - 1, allow_unused=True)
            flat = torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                              for x, p in zip(g, params, strict=True)])
            grads[name] = grads.get(name, 0) + flat
    trainer.model.load_state_dict(state_before)  # measuring must not move BN statistics
    base = grads["id"] + grads.get("tri", 0)
    total = sum(float(v.norm()) for v in grads.values())
    return {k: {"norm": float(v.norm()), "share": float(v.norm()) / total,
                "cos_base": float(torch.nn.functional.cosine_similarity(v, base, dim=0))}
            for k, v in grads.items()}


def same_modality_map(trainer: Trainer) -> float:
    """mAP of visible queries against the visible images of the *other* cameras (held-out
    identities), averaged over queries: identity features without the modality gap."""
    table = trainer.val_table
    assert table is not None
    vis = np.flatnonzero(table.modality == Modality.VISIBLE.code)
    f = table_features(trainer.model, table, image_size=(trainer.cfg.data.image_height, trainer.cfg.data.image_width),
                       device=trainer.device, batch_size=VAL_BATCH_SIZE, flip=VAL_FLIP, rows=vis)
    ids, cams = table.identity[vis], table.camera[vis]
    total, n = 0.0, 0
    for cam in np.unique(cams):
        q, g = cams == cam, cams != cam
        r = evaluate_features(f[q], f[g], ids[q], ids[g], cams[q], cams[g], sysu_removal=False,
                              unique_ids_cmc=False)
        k = int(q.sum())
        total, n = total + r.summary()["mAP"] * k, n + k
    return total / max(n, 1)


def trained_config(cfg: Config, meta: dict[str, Any]) -> Config:
    """``cfg`` with the ``model`` and ``loss`` sections a model file was trained with (its
    metadata's ``config``), so each loss term is the one that trained it; ``cfg`` unchanged
    for a file without a config."""
    trained = meta.get("config") or {}
    sections = {k: trained[k] for k in ("model", "loss") if k in trained}
    return replace(cfg, **sections) if sections else cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--shards", default="data/shards")
    ap.add_argument("--at", type=int, nargs="+", default=[1, 5, 10, 20, 40], help="epochs after which to measure")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    ap.add_argument("--model", default="", help="a trained model file to measure instead of training")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = config_from_dict(yaml.safe_load(Path(args.params).read_text()))
    model_file = read_model_file(args.model) if args.model else None
    if model_file is not None:
        cfg = trained_config(cfg, model_file["meta"])
    cfg = replace(cfg, train={"seed": args.seed, "epochs": max(max(args.at), 1)})
    trainer = Trainer(cfg, args.shards)
    trainer.sampler.set_epoch(10_000)  # fixed measurement batches, not the training draw
    batches = [b for _, b in zip(range(args.batches), trainer.loader, strict=False)]
    rows: list[dict[str, Any]] = []
    if model_file is not None:
        trainer.model.load_state_dict(model_file["model"])
        trainer.task.late_terms = True  # a trained model: every term, as at the end of training
        row = {"epoch": model_file["meta"].get("selected_epoch"), "model": args.model,
               "val_mAP": validate(trainer.model, trainer.val_table, cfg, trainer.device)["val_mAP"],
               "same_modality_mAP": same_modality_map(trainer), "terms": term_gradients(trainer, batches)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    while not args.model and trainer.epoch < cfg.train.epochs:
        record = trainer.run_epoch()
        if trainer.epoch in args.at:
            terms = term_gradients(trainer, batches)
            row = {"epoch": trainer.epoch, "val_mAP": record.get("val_mAP"),
                   "same_modality_mAP": same_modality_map(trainer) if trainer.val_table is not None else None,
                   **{k: record[k] for k in record if k.startswith(("kdw_", "conf_"))}, "terms": terms}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        out = {"params": args.params, "seed": args.seed, "batches": args.batches, "model": args.model,
               "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1))
    print()
    print("| epoch | val_mAP | same-modality mAP | " + " | ".join(
        f"{k}: norm / share / cos to id+tri" for k in rows[0]["terms"]) + " |")
    print("|---" * (3 + len(rows[0]["terms"])) + "|")
    for r in rows:
        cells = [f"{t['norm']:.3f} / {100 * t['share']:.0f} % / {t['cos_base']:+.2f}" for t in r["terms"].values()]
        vm = "" if r["val_mAP"] is None else f"{r['val_mAP']:.3f}"
        sm = "" if r["same_modality_mAP"] is None else f"{r['same_modality_mAP']:.3f}"
        print(f"| {r['epoch']} | {vm} | {sm} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
