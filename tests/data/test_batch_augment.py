"""BatchAugment: AGW's augmentation as one batched op, against torchvision per sample."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from vireid.data.batch_augment import BatchAugment, draw_params
from vireid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, scaled_pad

H, W = 24, 12


def _batch(b: int = 6, h: int = H, w: int = W, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


def _reference(img: torch.Tensor, pad: int, top: int, left: int, flip: bool) -> torch.Tensor:
    """torchvision's functional ops on one uint8 [3,H,W] image: pad -> crop -> flip -> normalise."""
    h, w = img.shape[-2:]
    out = TF.pad(img, [pad])  # zero padding in uint8 space, as v2.Pad
    out = TF.crop(out, top, left, h, w)
    if flip:
        out = TF.horizontal_flip(out)
    out = TF.to_dtype(out, torch.float32, scale=True)
    return TF.normalize(out, list(IMAGENET_MEAN), list(IMAGENET_STD))


@pytest.mark.parametrize("pad", [0, 1, 3])
def test_equals_torchvision_per_sample(pad: int) -> None:
    x = _batch()
    n = 2 * pad + 1
    # every corner and the centre, each with and without flip
    offsets = [(0, 0), (n - 1, n - 1), (0, n - 1), (n - 1, 0), (pad, pad), (n // 3, n - 1 - n // 3)]
    params = torch.tensor([[top, left, i % 2] for i, (top, left) in enumerate(offsets)], dtype=torch.int64)
    out = BatchAugment(pad=pad).apply(x, params)
    for i, (top, left, flip) in enumerate(params.tolist()):
        ref = _reference(x[i], pad, top, left, bool(flip))
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)


def test_zero_padding_shows_where_the_crop_leaves_the_image() -> None:
    x = torch.full((1, 3, H, W), 255, dtype=torch.uint8)
    out = BatchAugment(pad=2).apply(x, torch.tensor([[0, 0, 0]]))
    zero = ((0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))
    one = ((1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))
    torch.testing.assert_close(out[0, :, :2, :].amax(dim=(1, 2)), zero)  # top 2 rows padded
    torch.testing.assert_close(out[0, :, :, :2].amax(dim=(1, 2)), zero)  # left 2 columns padded
    torch.testing.assert_close(out[0, :, 2:, 2:].amin(dim=(1, 2)), one)  # the rest is the image


def test_draws_cover_the_offsets_and_flip_half() -> None:
    pad = 3
    torch.manual_seed(0)
    params = torch.cat([draw_params(64, pad) for _ in range(100)])  # 6400 samples
    assert params.dtype == torch.int64 and tuple(params.shape) == (6400, 3)
    for col in (0, 1):  # top, left: exactly 0..2*pad, every value drawn
        assert int(params[:, col].min()) == 0 and int(params[:, col].max()) == 2 * pad
        assert set(params[:, col].tolist()) == set(range(2 * pad + 1))
    assert set(params[:, 2].tolist()) == {0, 1}
    assert 0.45 < params[:, 2].float().mean().item() < 0.55
    # top and left are independent: all (2p+1)^2 pairs appear
    assert len(set(map(tuple, params[:, :2].tolist()))) == (2 * pad + 1) ** 2
    with pytest.raises(ValueError, match="pad must be >= 0"):
        draw_params(4, -1)


def test_default_pad_is_scaled_pad_of_the_height() -> None:
    aug = BatchAugment()
    assert aug.pad_for(288) == scaled_pad(288) == 10 and aug.pad_for(64) == scaled_pad(64) == 2
    # the random path draws offsets in 0..2*scaled_pad(H): pixel (r, c) lands within +-pad
    x = torch.zeros(1, 3, 64, 32, dtype=torch.uint8)
    x[0, :, 30, 10] = 255
    torch.manual_seed(0)
    shifts = set()
    for _ in range(200):
        out = aug(x)[0, 0]
        r, c = divmod(int(out.argmax()), 32)
        if c > 16:  # flipped: mirror back
            c = 31 - c
        shifts.add((r - 30, c - 10))
    assert {s for pair in shifts for s in pair} == set(range(-2, 3))


def test_seeded_draws_reproduce_and_differ_across_seeds() -> None:
    x = _batch(b=16)
    aug = BatchAugment(pad=2)
    torch.manual_seed(5)
    a = aug(x)
    torch.manual_seed(5)
    b = aug(x)
    torch.manual_seed(6)
    c = aug(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pad_zero_gives_the_normalised_maybe_flipped_input() -> None:
    x = _batch(b=32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    plain = (x.float() / 255 - mean) / std
    torch.manual_seed(0)
    out = BatchAugment(pad=0)(x)
    flipped = 0
    for i in range(len(x)):
        if torch.allclose(out[i], plain[i], rtol=0, atol=1e-6):
            continue
        torch.testing.assert_close(out[i], plain[i].flip(-1), rtol=0, atol=1e-6)
        flipped += 1
    assert 0 < flipped < len(x)


def test_dtype_shape_device() -> None:
    x = _batch(b=5, h=32, w=16)
    out = BatchAugment(size=(32, 16))(x)
    assert out.dtype == torch.float32 and tuple(out.shape) == (5, 3, 32, 16)
    assert out.device == x.device and out.is_contiguous()
    assert x.dtype == torch.uint8  # the input is left as it was
    if torch.cuda.is_available():
        torch.manual_seed(1)
        on_gpu = BatchAugment(size=(32, 16))(x.cuda())
        torch.manual_seed(1)
        on_cpu = BatchAugment(size=(32, 16))(x)
        assert on_gpu.device.type == "cuda"
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-6)  # same draws


def test_wrong_input_raises_value_error_naming_it() -> None:
    aug = BatchAugment(pad=1)
    with pytest.raises(ValueError, match="uint8.*float32"):
        aug(_batch().float())
    with pytest.raises(ValueError, match="4-D.*shape \\(3, 24, 12\\)"):
        aug(_batch()[0])
    with pytest.raises(ValueError, match="3 channels.*got 1"):
        aug(_batch()[:, :1])
    with pytest.raises(ValueError, match="size \\(32, 16\\), got \\(24, 12\\)"):
        BatchAugment(size=(32, 16))(_batch())
    with pytest.raises(ValueError, match="params must have shape \\(6, 3\\)"):
        aug.apply(_batch(), torch.zeros(5, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="pad must be >= 0"):
        BatchAugment(pad=-1)
