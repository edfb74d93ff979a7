"""Synthetic SYSU-MM01 and RegDB trees: a small, real cross-modality problem from a seed.

Identities differ in body shape, clothing pattern and accessories (seen by both
modalities), clothing colour (visible only) and a thermal signature (infrared only).
Cameras differ in view, scale, position, background, lighting, blur and noise. Every
random draw is keyed by (seed, what, camera, identity, image), so the bytes of a file do
not depend on generation order: the same seed gives the same tree, byte for byte
(JPEG quality fixed, no metadata; RegDB images are BMP like the real dataset).
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vireid.config import ConfigError, SyntheticConfig
from vireid.data.sample import Modality
from vireid.data.sysu import INFRARED_CAMERAS
from vireid.io import atomic_directory

log = logging.getLogger(__name__)

JPEG_QUALITY = 90  # quality of generated SYSU images (fixed: same seed, same bytes)
REGDB_TRIALS = range(1, 11)

# label map values of the rendered person
BG, SKIN, UPPER, LOWER, BAG, HAIR, SHOE, HAT = range(8)
_SYSU, _REGDB = 1, 2  # dataset tags in the random keys
_T_ID, _T_CAM, _T_IMG, _T_SPLIT = 1, 2, 3, 4
VIEWS = ("front", "back", "side")


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def _hsv_colour(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    """A random saturated colour, float32 [3] in 0..255."""
    h, sat, val = rng.uniform(0, 1), rng.uniform(*s), rng.uniform(*v)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return np.asarray(rgb, dtype=np.float32) * 255.0


@dataclass(frozen=True)
class Identity:
    """What a person looks like: shape, pattern, accessories, colours, thermal signature."""

    height: float  # body height / image height (at camera scale 1)
    shoulders: float  # shoulder width / image width
    head: float  # head height / body height
    legs: float  # leg length / body height
    pattern: int  # 0 solid, 1 horizontal stripes, 2 vertical stripes, 3 checks, 4 diagonal
    period: float  # pattern period / body height
    lower_kind: int  # 0 trousers, 1 shorts, 2 skirt
    backpack: bool
    hat: bool
    shoulder_bag: int  # 0 none, 1 left, 2 right
    colours: np.ndarray  # float32 [8, 3]: visible colour per label (+ row 0 unused)
    pattern_colour: np.ndarray  # float32 [3]: second colour of the upper pattern
    thermal: np.ndarray  # float32 [8]: infrared intensity 0..1 per label
    thermal_contrast: float  # how much the pattern modulates the infrared intensity
    hot_spot: float  # vertical position (0 top .. 1 bottom of the torso) of the warmest band


def make_identity(seed: int, dataset: int, ident: int) -> Identity:
    r = _rng(seed, _T_ID, dataset, ident)
    colours = np.zeros((8, 3), np.float32)
    colours[SKIN] = np.asarray([224, 180, 150], np.float32) * r.uniform(0.55, 1.05)
    colours[UPPER] = _hsv_colour(r, (0.35, 1.0), (0.35, 1.0))
    colours[LOWER] = _hsv_colour(r, (0.1, 0.8), (0.15, 0.85))
    colours[BAG] = _hsv_colour(r, (0.2, 0.9), (0.1, 0.7))
    colours[HAIR] = np.asarray([60, 40, 25], np.float32) * r.uniform(0.3, 2.2)
    colours[SHOE] = np.full(3, r.uniform(20, 200), np.float32)
    colours[HAT] = _hsv_colour(r, (0.3, 1.0), (0.3, 1.0))
    thermal = np.zeros(8, np.float32)
    thermal[SKIN] = r.uniform(0.82, 1.0)
    thermal[UPPER] = r.uniform(0.35, 0.8)
    thermal[LOWER] = r.uniform(0.3, 0.75)
    thermal[BAG] = r.uniform(0.08, 0.3)
    thermal[HAIR] = r.uniform(0.45, 0.75)
    thermal[SHOE] = r.uniform(0.2, 0.45)
    thermal[HAT] = r.uniform(0.15, 0.5)
    return Identity(
        height=float(r.uniform(0.74, 0.93)), shoulders=float(r.uniform(0.26, 0.44)),
        head=float(r.uniform(0.11, 0.155)), legs=float(r.uniform(0.42, 0.53)),
        pattern=int(r.integers(0, 5)), period=float(r.uniform(0.035, 0.09)),
        lower_kind=int(r.choice(3, p=[0.6, 0.2, 0.2])), backpack=bool(r.uniform() < 0.4),
        hat=bool(r.uniform() < 0.3), shoulder_bag=int(r.choice(3, p=[0.6, 0.2, 0.2])),
        colours=colours, pattern_colour=_hsv_colour(r, (0.0, 1.0), (0.2, 1.0)), thermal=thermal,
        thermal_contrast=float(r.uniform(0.25, 0.5)), hot_spot=float(r.uniform(0.1, 0.9)),
    )


@dataclass(frozen=True)
class Camera:
    """How a camera sees: view, scale, position, background, lighting, blur, noise."""

    modality: Modality
    view_p: np.ndarray  # float [3]: probabilities of front, back, side
    scale: float  # person size factor
    x_offset: float  # horizontal position of the person / image width
    foot: float  # vertical position of the feet / image height
    background: np.ndarray  # float32 [H, W, 3] in 0..255 (grey for infrared)
    gain: float  # global brightness
    cast: np.ndarray  # float32 [3]: colour cast (all ones for infrared)
    blur: float  # Gaussian blur radius in pixels
    noise: float  # noise standard deviation (0..255 scale)


def _background(layout_key: tuple[int, ...], h: int, w: int, modality: Modality, outdoor: bool) -> np.ndarray:
    """A scene: sky/wall gradient, floor, doors/windows/trees; rendered per modality."""
    r = _rng(*layout_key)
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    top = _hsv_colour(r, (0.0, 0.5), (0.35, 0.95))
    bottom = _hsv_colour(r, (0.0, 0.5), (0.2, 0.8))
    horizon = int(h * r.uniform(0.45, 0.75))
    for y in range(h):
        c = top + (bottom - top) * (y / max(1, h - 1))
        d.line([(0, y), (w, y)], fill=tuple(int(v) for v in c))
    floor = _hsv_colour(r, (0.0, 0.4), (0.2, 0.7))
    d.rectangle([0, horizon, w, h], fill=tuple(int(v) for v in floor))
    for _ in range(int(r.integers(2, 6))):  # doors, windows, trees, poles
        x0 = int(r.uniform(-0.2, 1.0) * w)
        y0 = int(r.uniform(0.0, 0.6) * horizon)
        x1 = x0 + int(r.uniform(0.1, 0.45) * w)
        y1 = min(horizon, y0 + int(r.uniform(0.2, 0.8) * horizon))
        col = tuple(int(v) for v in _hsv_colour(r, (0.0, 0.8), (0.1, 1.0)))
        if outdoor and r.uniform() < 0.5:
            d.ellipse([x0, y0, x1, y1], fill=col)
        else:
            d.rectangle([x0, y0, x1, y1], fill=col)
    for k in range(int(r.integers(0, 4))):  # floor tiles / road markings
        y = horizon + int((k + 1) * (h - horizon) / 5)
        d.line([(0, y), (w, y + int(r.uniform(-4, 4)))], fill=tuple(int(v) for v in floor * 0.7))
    arr = np.asarray(img, dtype=np.float32)
    if modality is Modality.INFRARED:  # temperature of the scene: mostly dark, structure kept
        grey = arr.mean(axis=2, keepdims=True) / 255.0
        level, spread = (r.uniform(0.1, 0.3), r.uniform(0.2, 0.5))
        arr = np.repeat((level + spread * grey) * 255.0, 3, axis=2)
    return arr


def make_camera(seed: int, dataset: int, cam: int, h: int, w: int, modality: Modality,
                layout_cam: int, outdoor: bool) -> Camera:
    r = _rng(seed, _T_CAM, dataset, cam)
    view_p = r.dirichlet([1.0, 1.0, 1.0]) * 0.7 + 0.1
    return Camera(
        modality=modality, view_p=view_p / view_p.sum(), scale=float(r.uniform(0.78, 1.0)),
        x_offset=float(r.uniform(-0.1, 0.1)), foot=float(r.uniform(0.9, 0.99)),
        background=_background((seed, _T_CAM, dataset, layout_cam, 7), h, w, modality, outdoor),
        gain=float(r.uniform(0.7, 1.2)),
        cast=(r.uniform(0.82, 1.18, 3).astype(np.float32) if modality is Modality.VISIBLE
              else np.ones(3, np.float32)),
        blur=float(r.uniform(0.0, 1.1)), noise=float(r.uniform(2.0, 9.0)),
    )


def _draw_person(ident: Identity, cam: Camera, r: np.random.Generator, h: int, w: int,
                 view: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Label map uint8 [H, W] of the person, pattern mask bool [H, W], torso (top, bottom) rows."""
    lab = Image.new("L", (w, h), BG)
    d = ImageDraw.Draw(lab)
    bh = ident.height * h * cam.scale * r.uniform(0.93, 1.05)
    foot = cam.foot * h + r.uniform(-0.02, 0.02) * h
    top = foot - bh
    cx = w * (0.5 + cam.x_offset + r.uniform(-0.06, 0.06))
    side = view == "side"
    sw = ident.shoulders * w * (0.62 if side else 1.0)
    head_h = ident.head * bh
    head_w = head_h * 0.78
    hip = foot - ident.legs * bh
    neck = top + head_h * 1.08
    # legs
    leg_w = sw * (0.5 if side else 0.38)
    spread = r.uniform(0.0, 0.09) * w
    legs = [cx - spread / 2 - leg_w / 2] if side and spread < 0.03 * w else \
        [cx - sw * 0.24 - spread / 2 - leg_w / 2, cx + sw * 0.24 + spread / 2 - leg_w / 2]
    if side:
        legs = [cx - leg_w / 2 - spread / 2, cx - leg_w / 2 + spread / 2]
    knee = hip + (foot - hip) * 0.45
    for x in legs:
        d.rectangle([x, hip, x + leg_w, foot], fill=SKIN if ident.lower_kind == 1 else LOWER)
        if ident.lower_kind == 1:
            d.rectangle([x, hip, x + leg_w, knee], fill=LOWER)
        d.rectangle([x - 1, foot - bh * 0.035, x + leg_w + (2 if side else 1), foot], fill=SHOE)
    if ident.lower_kind == 2:  # skirt
        d.polygon([(cx - sw * 0.45, hip - 1), (cx + sw * 0.45, hip - 1),
                   (cx + sw * 0.62, knee + 2), (cx - sw * 0.62, knee + 2)], fill=LOWER)
    # arms (sleeves are upper clothing, hands are skin)
    arm_w = max(2.0, sw * 0.18)
    swing = r.uniform(-0.05, 0.05) * w
    arm_bottom = hip + (foot - hip) * 0.12
    for sign in ((1,) if side else (-1, 1)):
        x = cx + sign * (sw / 2 + arm_w * 0.35) - arm_w / 2 + (swing if side else 0)
        d.rectangle([x, neck + 1, x + arm_w, arm_bottom], fill=UPPER)
        d.rectangle([x, arm_bottom - bh * 0.04, x + arm_w, arm_bottom], fill=SKIN)
    # torso
    d.polygon([(cx - sw / 2, neck), (cx + sw / 2, neck), (cx + sw * 0.42, hip + 1),
               (cx - sw * 0.42, hip + 1)], fill=UPPER)
    # head and hair
    hx0, hx1 = cx - head_w / 2, cx + head_w / 2
    d.ellipse([hx0, top, hx1, top + head_h], fill=SKIN)
    if view == "back":
        d.ellipse([hx0, top, hx1, top + head_h], fill=HAIR)
    elif side:
        d.pieslice([hx0, top, hx1, top + head_h], 90, 330, fill=HAIR)
    else:
        d.chord([hx0, top, hx1, top + head_h], 180, 360, fill=HAIR)
    if ident.hat:
        d.rectangle([hx0 - 1, top - head_h * 0.18, hx1 + 1, top + head_h * 0.25], fill=HAT)
    # accessories
    if ident.backpack:
        bw, bt, bb = sw * 0.8, neck + bh * 0.02, neck + (hip - neck) * 0.85
        if view == "back":
            d.rectangle([cx - bw / 2, bt, cx + bw / 2, bb], fill=BAG)
        elif side:
            d.rectangle([cx - sw / 2 - bw * 0.45, bt, cx - sw / 2 + 1, bb], fill=BAG)
        else:
            for sx in (cx - sw * 0.28, cx + sw * 0.22):
                d.rectangle([sx, neck, sx + max(1.0, sw * 0.07), hip - (hip - neck) * 0.3], fill=BAG)
    if ident.shoulder_bag:
        sgn = -1 if ident.shoulder_bag == 1 else 1
        bx = cx + sgn * sw * 0.55
        d.line([(cx - sgn * sw * 0.35, neck), (bx, hip - bh * 0.02)], fill=BAG, width=max(1, int(w / 40)))
        d.rectangle([bx - sw * 0.2, hip - bh * 0.07, bx + sw * 0.2, hip + bh * 0.06], fill=BAG)
    labels = np.asarray(lab, dtype=np.uint8)
    if side and r.uniform() < 0.5:  # facing left or right
        labels = labels[:, ::-1]
    # clothing pattern over the upper body, in body-relative coordinates
    period = max(2.0, ident.period * bh)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = (yy - neck) / period, (xx - cx) / period
    pat = [np.zeros_like(yy), yy, xx, yy + np.floor(xx), yy + xx][ident.pattern]
    if ident.pattern == 3:
        pattern = (np.floor(yy) + np.floor(xx)) % 2 == 1
    else:
        pattern = np.floor(pat) % 2 == 1 if ident.pattern else np.zeros((h, w), bool)
    return labels, pattern & (labels == UPPER), (neck, hip)


def render(ident: Identity, cam: Camera, r: np.random.Generator, h: int, w: int,
           view: str | None = None) -> np.ndarray:
    """One image, uint8 [H, W, 3] (infrared: three equal channels)."""
    view = view if view is not None else VIEWS[int(r.choice(3, p=cam.view_p))]
    labels, pattern, (neck, hip) = _draw_person(ident, cam, r, h, w, view)
    person = labels != BG
    if cam.modality is Modality.VISIBLE:
        colour = ident.colours[labels]  # [H, W, 3]
        colour[pattern] = ident.pattern_colour
        shade = r.uniform(0.85, 1.1)
        img = np.where(person[..., None], colour * shade, cam.background)
        img = img * cam.gain * r.uniform(0.9, 1.1) * cam.cast
    else:
        heat = ident.thermal[labels].copy()  # [H, W]
        heat[pattern] *= 1.0 - ident.thermal_contrast
        rows = np.arange(h, dtype=np.float32)[:, None]
        band = neck + ident.hot_spot * (hip - neck)
        heat += (labels == UPPER) * 0.18 * np.exp(-((rows - band) / (0.12 * h)) ** 2)
        grey = np.clip(heat, 0, 1) * 255.0 * r.uniform(0.9, 1.05)
        img = np.where(person[..., None], grey[..., None], cam.background)
        img = img * cam.gain * r.uniform(0.92, 1.08)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    radius = cam.blur + r.uniform(0.0, 0.3)
    if radius > 0.05:
        pil = pil.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(pil, dtype=np.float32)
    noise = r.normal(0.0, cam.noise, (h, w, 1 if cam.modality is Modality.INFRARED else 3))
    return np.clip(arr + noise, 0, 255).astype(np.uint8)


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(arr).save(buf, "JPEG", quality=JPEG_QUALITY, optimize=False)
    else:
        Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def sysu_split_ids(cfg: SyntheticConfig) -> dict[str, list[int]]:
    """Identities 1..N split into train / val / test (test >= 8), keyed by the seed."""
    n = cfg.sysu_identities
    n_test = max(8, round(cfg.sysu_test_fraction * n))
    n_val = round(cfg.sysu_val_fraction * n)
    if n - n_test - n_val < 2:
        raise ConfigError(f"data.synth.sysu_identities: {n} leaves fewer than 2 train identities")
    perm = _rng(cfg.seed, _T_SPLIT, _SYSU).permutation(np.arange(1, n + 1))
    return {"test": sorted(int(i) for i in perm[:n_test]),
            "val": sorted(int(i) for i in perm[n_test:n_test + n_val]),
            "train": sorted(int(i) for i in perm[n_test + n_val:])}


# SYSU cameras: 1, 2 indoor rooms; 3 infrared in camera 2's room; 4, 5 outdoor; 6 infrared outdoor
_SYSU_LAYOUT = {1: (1, False), 2: (2, False), 3: (2, False), 4: (4, True), 5: (5, True), 6: (6, True)}


def generate_sysu(root: str | os.PathLike[str], cfg: SyntheticConfig) -> Path:
    """Write a SYSU-MM01 tree at ``root`` (atomically: built aside, then renamed).

    ``cam{1..6}/{id:04d}/{n:04d}.jpg`` for every identity in every camera
    (``cfg.sysu_images_per_camera`` each) and ``exp/{train,val,test}_id.txt``.
    """
    h, w, n_img = cfg.image_height, cfg.image_width, cfg.sysu_images_per_camera
    splits = sysu_split_ids(cfg)
    idents = {i: make_identity(cfg.seed, _SYSU, i) for i in range(1, cfg.sysu_identities + 1)}
    t0, count = time.perf_counter(), 0
    with atomic_directory(root) as tmp:
        for cam, (layout, outdoor) in _SYSU_LAYOUT.items():
            mod = Modality.INFRARED if cam in INFRARED_CAMERAS else Modality.VISIBLE
            camera = make_camera(cfg.seed, _SYSU, cam, h, w, mod, layout, outdoor)
            for ident, look in idents.items():
                folder = tmp / f"cam{cam}" / f"{ident:04d}"
                folder.mkdir(parents=True)
                for k in range(1, n_img + 1):
                    arr = render(look, camera, _rng(cfg.seed, _T_IMG, _SYSU, cam, ident, k), h, w)
                    (folder / f"{k:04d}.jpg").write_bytes(_encode(arr, "JPEG"))
                    count += 1
        (tmp / "exp").mkdir()
        for name, ids in splits.items():
            (tmp / "exp" / f"{name}_id.txt").write_text(",".join(str(i) for i in ids))
    log.info("generated synthetic SYSU-MM01 at %s: %d identities, %d images in %.1f s",
             root, len(idents), count, time.perf_counter() - t0)
    return Path(root)


def regdb_trial_ids(cfg: SyntheticConfig, trial: int) -> tuple[list[int], list[int]]:
    """(train ids, test ids) of one trial: a seeded half/half split of 1..N."""
    perm = _rng(cfg.seed, _T_SPLIT, _REGDB, trial).permutation(np.arange(1, cfg.regdb_identities + 1))
    half = cfg.regdb_identities // 2
    return sorted(int(i) for i in perm[:half]), sorted(int(i) for i in perm[half:])


def generate_regdb(root: str | os.PathLike[str], cfg: SyntheticConfig) -> Path:
    """Write a RegDB tree at ``root`` (atomically): ``Visible/<id>/``, ``Thermal/<id>/`` (BMP)
    and ``idx/{train,test}_{visible,thermal}_{1..10}.txt`` (``<path> <identity>`` lines).

    As in RegDB, the k-th visible and thermal images of a person are a co-registered pair:
    same pose and view, seen by the two cameras.
    """
    h, w, n_img = cfg.image_height, cfg.image_width, cfg.regdb_images_per_modality
    ids = list(range(1, cfg.regdb_identities + 1))
    cams = {"visible": make_camera(cfg.seed, _REGDB, 1, h, w, Modality.VISIBLE, 1, True),
            "thermal": make_camera(cfg.seed, _REGDB, 2, h, w, Modality.INFRARED, 1, True)}
    files: dict[tuple[str, int], list[str]] = {}
    t0 = time.perf_counter()
    with atomic_directory(root) as tmp:
        for ident in ids:
            look = make_identity(cfg.seed, _REGDB, ident)
            for k in range(1, n_img + 1):
                view = VIEWS[int(_rng(cfg.seed, _T_IMG, _REGDB, ident, k, 0).choice(3, p=cams["visible"].view_p))]
                for modality, camera in cams.items():
                    folder = "Visible" if modality == "visible" else "Thermal"
                    rel = f"{folder}/{ident}/{modality[0]}_{ident:03d}_{k:02d}.bmp"
                    # same key for both modalities: same pose (the pair is co-registered)
                    arr = render(look, camera, _rng(cfg.seed, _T_IMG, _REGDB, ident, k), h, w, view)
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / rel).write_bytes(_encode(arr, "BMP"))
                    files.setdefault((modality, ident), []).append(rel)
        (tmp / "idx").mkdir()
        for trial in REGDB_TRIALS:
            for part, part_ids in zip(("train", "test"), regdb_trial_ids(cfg, trial), strict=True):
                for modality in ("visible", "thermal"):
                    lines = [f"{rel} {i}" for i in part_ids for rel in files[(modality, i)]]
                    (tmp / "idx" / f"{part}_{modality}_{trial}.txt").write_text("\n".join(lines) + "\n")
    log.info("generated synthetic RegDB at %s: %d identities, %d images in %.1f s",
             root, len(ids), 2 * n_img * len(ids), time.perf_counter() - t0)
    return Path(root)
