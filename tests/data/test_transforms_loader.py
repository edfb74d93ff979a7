"""Transforms on uint8 [3,H,W]; ShardImageDataset items; a sampler-driven loader batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vireid.config import DataConfig
from vireid.data import transforms as T
from vireid.data.loader import ShardImageDataset
from vireid.data.prepare import prepare
from vireid.data.sampler import IdentityBalancedSampler
from vireid.data.shards import ShardSet
from vireid.data.transforms import IMAGENET_MEAN, IMAGENET_STD

H, W = 32, 16


def test_test_transform_is_resize_and_normalise() -> None:
    img = torch.randint(0, 256, (3, H, W), dtype=torch.uint8)
    out = T.test_transform(H, W)(img)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, H, W)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out, (img.float() / 255 - mean) / std)
    assert tuple(T.test_transform(16, 8)(img).shape) == (3, 16, 8)


def test_train_transform_seeded_and_augments() -> None:
    img = torch.arange(3 * H * W, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, H, W)
    t = T.train_transform(H, W)
    torch.manual_seed(0)
    a = t(img)
    torch.manual_seed(0)
    b = t(img)
    torch.testing.assert_close(a, b)
    assert tuple(a.shape) == (3, H, W) and a.dtype == torch.float32
    torch.manual_seed(1)
    outs = [t(img) for _ in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # crop/flip vary
    pad_value = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    border = torch.stack([o[:, 0, 0] for o in outs])
    assert any(torch.allclose(row, pad_value, atol=1e-5) for row in border)  # zero padding shows up


def test_crop_padding_scales_with_image_height() -> None:
    assert [T.scaled_pad(h) for h in (288, 256, 128, 64, 16)] == [10, 9, 4, 2, 1]
    with pytest.raises(ValueError, match="pad must be >= 0"):
        T.train_transform(64, 32, pad=-1)
    # a 64x32 image is shifted by at most scaled_pad(64) = 2 pixels in each direction
    img = torch.zeros(3, 64, 32, dtype=torch.uint8)
    img[:, 30, 15] = 255  # one bright pixel
    t = T.train_transform(64, 32)
    torch.manual_seed(0)
    shifts = set()
    for _ in range(200):
        out = t(img)[0]
        r, c = divmod(int(out.argmax()), 32)
        if c not in (15, 16):  # a flip mirrors column 15 to 16; keep unflipped draws
            continue
        shifts.add(r - 30)
    assert shifts and max(abs(s) for s in shifts) <= 2 and len(shifts) > 1


def test_dataset_items_and_balanced_batch(tiny_sysu_master: Path, tmp_path: Path) -> None:
    cfg = DataConfig(root=str(tiny_sysu_master), image_height=H, image_width=W, holdout_identities=0)
    table = ShardSet(prepare(cfg, tmp_path / "shards")).table("train")
    ds = ShardImageDataset(table, T.test_transform(H, W))
    item = ds[7]
    assert set(item) == {"image", "label", "modality", "camera", "identity", "index"}
    assert item["index"] == 7 and item["label"] == table.label[7] and item["camera"] == table.camera[7]
    assert item["modality"] == table.modality[7] and tuple(item["image"].shape) == (3, H, W)
    raw = ShardImageDataset(table)[7]["image"]
    assert raw.dtype == torch.uint8 and torch.equal(raw, table.image(7))
    sampler = IdentityBalancedSampler(table.label, table.modality, 2, 2, seed=0)
    batch = next(iter(DataLoader(ds, batch_sampler=sampler)))
    assert tuple(batch["image"].shape) == (8, 3, H, W)
    np.testing.assert_array_equal(batch["modality"].numpy(), [0] * 4 + [1] * 4)
    np.testing.assert_array_equal(batch["label"][:4].numpy(), batch["label"][4:].numpy())


def test_raw_shards_same_batches_with_0_and_2_loader_workers(tiny_sysu_master: Path, tmp_path: Path) -> None:
    """Raw shards through DataLoader workers: the decode is a view of the mapped file, the
    batches are the stored pixels, identical in-process and from 2 worker processes."""
    cfg = DataConfig(root=str(tiny_sysu_master), image_height=H, image_width=W, holdout_identities=0,
                     shard_rows=20, shard_encoding="raw")
    table = ShardSet(prepare(cfg, tmp_path / "shards")).table("train")
    batches = {}
    for workers in (0, 2):
        sampler = IdentityBalancedSampler(table.label, table.modality, 2, 2, seed=0)
        loader = DataLoader(ShardImageDataset(table), batch_sampler=sampler, num_workers=workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) > 1
    for a, b in zip(batches[0], batches[2], strict=True):
        assert a["image"].dtype == torch.uint8 and tuple(a["image"].shape) == (8, 3, H, W)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])
        expected = torch.stack([table.image(int(i)) for i in a["index"]])
        assert torch.equal(a["image"], expected)
        assert torch.equal(a["label"], torch.as_tensor(table.label[a["index"].numpy()]))
