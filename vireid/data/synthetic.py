"""Generate synthetic SYSU-MM01 and RegDB trees: a cross-modality problem with each one's physics.

What the generator models (../shared/DATASETS.md, "Synthetic data"):

- **Identities** differ in what both modalities see: body height and proportions, build,
  garment types (sleeve length, trousers / shorts / skirt) and their boundaries, the
  geometry of the printed upper-body pattern (stripes, checks, diagonal, chest band: type,
  period, phase), accessories (backpack, shoulder bag, hat) and hair length; and in what
  one modality alone sees: the dyes' visible colours, and per material a near-infrared
  (NIR) reflectance factor or a thermal signature.
- **Materials.** Every surface (skin, hair, each garment, the pattern's second dye, bags,
  shoes) is a :class:`Material`: a visible RGB reflectance, a NIR response
  ``nir = clip(gain * luminance + offset)`` whose gain and offset belong to the material (the
  RFM paper's surface-dependent linear model between bands: many dark dyes are bright in NIR,
  two garments of different colour can look alike), and a temperature (thermal).
- **SYSU-MM01's infrared cameras (3, 6)** are NIR cameras with active illumination: grey
  reflected light; shapes, garment boundaries, folds and printed patterns stay visible with
  the material's own NIR factor; the illuminator's fall-off darkens the far background and the
  image edges; vegetation is bright in NIR; low contrast and more sensor noise.
- **RegDB's thermal camera** sees emitted heat: skin hottest, clothing by thickness and fit
  (a warm band over the torso), printed patterns nearly vanish, soft edges, a cool, flat
  background; the visible/thermal pair is co-registered (same pose).
- **Cameras** differ in view probabilities, distance (scale) and resolution, position, scene
  and clutter, lighting (gain, colour cast, side light), blur, noise, and how often a person
  is partly occluded (furniture, railings, passers-by in the foreground).
- **SYSU layout**: cameras 1, 2 indoor rooms, 3 NIR in camera 2's room, 4, 5 outdoor,
  6 NIR outdoor; an identity appears in each camera with probability
  ``data.synth.sysu_camera_presence`` (at least one visible and one infrared camera).

Every random draw is keyed by (seed, what, camera, identity, image), so the bytes of a file do
not depend on generation order: the same seed gives the same tree, byte for byte (JPEG
quality fixed, no metadata; RegDB images are BMP like the real dataset).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vireid.config import REGDB_TRIALS, ConfigError, SyntheticConfig
from vireid.data.sample import Modality
from vireid.data.sysu import INFRARED_CAMERAS
from vireid.io import atomic_directory

log = logging.getLogger(__name__)

JPEG_QUALITY = 90  # quality of generated SYSU images (fixed: same seed, same bytes)

# label map values of the rendered person; PATTERN is the upper garment's second dye
BG, SKIN, UPPER, LOWER, BAG, HAIR, SHOE, HAT, PATTERN = range(9)
N_LABELS = 9
_SYSU, _REGDB = 1, 2  # dataset tags in the random keys
_T_ID, _T_CAM, _T_IMG, _T_SPLIT, _T_PRESENCE = 1, 2, 3, 4, 5
VIEWS = ("front", "back", "side")
# ITU-R BT.601 luma weights: the visible luminance a NIR factor scales
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


class Sensor:
    """What a camera measures."""

    VISIBLE = "visible"  # RGB reflectance under ambient light
    NIR = "nir"  # near-infrared reflectance under active illumination (SYSU-MM01 cameras 3, 6)
    THERMAL = "thermal"  # emitted heat (RegDB's far-infrared camera)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def _hsv_colour(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    """A random colour, float32 [3] in 0..1."""
    h, sat, val = rng.uniform(0, 1), rng.uniform(*s), rng.uniform(*v)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return np.asarray(rgb, dtype=np.float32)


@dataclass(frozen=True)
class Material:
    """One surface: visible reflectance, NIR response and temperature, all in 0..1."""

    rgb: np.ndarray  # float32 [3] visible reflectance
    nir_gain: float  # NIR reflectance = clip(nir_gain * luminance(rgb) + nir_offset, 0, 1)
    nir_offset: float
    heat: float  # thermal emission (skin ~0.9; clothing by thickness; bags and shoes cold)

    @property
    def nir(self) -> float:
        return float(np.clip(self.nir_gain * float(_LUMA @ self.rgb) + self.nir_offset, 0.0, 1.0))


def _dye(r: np.random.Generator, rgb: np.ndarray, heat: float) -> Material:
    """A dyed textile: its own linear map from visible luminance to NIR reflectance.

    Most dyes keep some of their visible brightness in NIR (gain 0.4-1.6); about a third are
    NIR-transparent dark dyes over a reflective fibre (a large offset: dark in visible, bright
    in NIR).
    """
    gain = float(np.exp(r.uniform(np.log(0.4), np.log(1.6))))
    offset = float(r.uniform(0.35, 0.65)) if r.uniform() < 0.35 else float(r.uniform(0.0, 0.15))
    return Material(rgb, gain, offset, heat)


@dataclass(frozen=True)
class Identity:
    """What a person looks like: shape, garments, pattern geometry, accessories, materials."""

    height: float  # body height / image height (at camera scale 1)
    shoulders: float  # shoulder width / image width
    build: float  # girth factor of torso and limbs (0.85 slim .. 1.2 broad)
    head: float  # head height / body height
    legs: float  # leg length / body height
    long_sleeves: bool  # sleeves to the wrist (else to the elbow, forearms are skin)
    lower_kind: int  # 0 trousers, 1 shorts, 2 skirt
    pattern: int  # 0 solid, 1 horizontal stripes, 2 vertical stripes, 3 checks, 4 diagonal, 5 chest band
    period: float  # pattern period / body height
    phase: float  # pattern phase (fraction of a period)
    hair: int  # 0 short, 1 shoulder length, 2 long
    backpack: bool
    hat: bool
    shoulder_bag: int  # 0 none, 1 left, 2 right
    materials: tuple[Material, ...]  # one per label (index 0, the background, unused)
    hot_spot: float  # vertical position (0 top .. 1 bottom of the torso) of the warmest band (thermal)


def make_identity(seed: int, dataset: int, ident: int) -> Identity:
    r = _rng(seed, _T_ID, dataset, ident)
    skin_tone = r.uniform(0.45, 1.0)
    skin = Material(np.asarray([0.88, 0.7, 0.58], np.float32) * skin_tone,
                    1.0, float(r.uniform(0.35, 0.5)), float(r.uniform(0.85, 1.0)))  # skin reflects NIR well
    hair = Material(np.asarray([0.24, 0.16, 0.1], np.float32) * r.uniform(0.3, 2.2),
                    1.0, float(r.uniform(0.15, 0.35)), float(r.uniform(0.45, 0.7)))  # melanin: brighter in NIR
    upper_thick, lower_thick = r.uniform(0.0, 1.0), r.uniform(0.0, 1.0)  # garment thickness (thermal)
    upper = _dye(r, _hsv_colour(r, (0.2, 1.0), (0.12, 1.0)), 0.8 - 0.45 * upper_thick)
    pattern = _dye(r, _hsv_colour(r, (0.0, 1.0), (0.1, 1.0)), 0.8 - 0.45 * upper_thick)
    lower = _dye(r, _hsv_colour(r, (0.05, 0.8), (0.1, 0.85)), 0.75 - 0.45 * lower_thick)
    bag = _dye(r, _hsv_colour(r, (0.1, 0.9), (0.08, 0.7)), float(r.uniform(0.08, 0.25)))
    shoe = _dye(r, np.full(3, r.uniform(0.06, 0.8), np.float32), float(r.uniform(0.2, 0.4)))
    hat = _dye(r, _hsv_colour(r, (0.2, 1.0), (0.1, 1.0)), float(r.uniform(0.2, 0.45)))
    materials = (skin, skin, upper, lower, bag, hair, shoe, hat, pattern)
    return Identity(
        height=float(r.uniform(0.72, 0.93)), shoulders=float(r.uniform(0.26, 0.44)),
        build=float(r.uniform(0.85, 1.2)), head=float(r.uniform(0.11, 0.155)),
        legs=float(r.uniform(0.42, 0.53)), long_sleeves=bool(r.uniform() < 0.55),
        lower_kind=int(r.choice(3, p=[0.6, 0.2, 0.2])),
        pattern=int(r.choice(6, p=[0.2, 0.18, 0.16, 0.16, 0.15, 0.15])),
        period=float(r.uniform(0.035, 0.1)), phase=float(r.uniform(0, 1)),
        hair=int(r.choice(3, p=[0.5, 0.25, 0.25])), backpack=bool(r.uniform() < 0.35),
        hat=bool(r.uniform() < 0.25), shoulder_bag=int(r.choice(3, p=[0.6, 0.2, 0.2])),
        materials=materials, hot_spot=float(r.uniform(0.1, 0.9)),
    )


@dataclass(frozen=True)
class Camera:
    """How a camera sees: sensor, view, distance and resolution, scene, light, blur, noise."""

    sensor: str  # Sensor.VISIBLE | Sensor.NIR | Sensor.THERMAL
    view_p: np.ndarray  # float [3]: probabilities of front, back, side
    scale: float  # person size factor (distance)
    resolution: float  # sensor resolution relative to the image (< 1: upsampled, soft)
    x_offset: float  # horizontal position of the person / image width
    foot: float  # vertical position of the feet / image height
    background: np.ndarray  # float32 [H, W, 3] in 0..255, in the sensor's terms
    gain: float  # global brightness (visible: exposure; NIR: illuminator power)
    cast: np.ndarray  # float32 [3]: colour cast (all ones unless visible)
    side_light: float  # strength of a left/right lighting gradient (visible)
    blur: float  # Gaussian blur radius in pixels
    noise: float  # noise standard deviation (0..255 scale)
    occlusion: float  # probability that an image is partly occluded
    occluder: np.ndarray  # float32 [3] 0..255: the camera's foreground furniture, in the sensor's terms

    @property
    def modality(self) -> Modality:
        return Modality.VISIBLE if self.sensor == Sensor.VISIBLE else Modality.INFRARED


def _scene(r: np.random.Generator, h: int, w: int, outdoor: bool) -> tuple[Image.Image, Image.Image]:
    """A scene as (visible RGB image, NIR grey image): wall/sky, floor, objects, clutter.

    Each object's NIR brightness follows its material (vegetation is bright in NIR).
    """
    vis = Image.new("RGB", (w, h))
    nir = Image.new("L", (w, h))
    dv, dn = ImageDraw.Draw(vis), ImageDraw.Draw(nir)

    def paint(shape: str, box: list[float], rgb: np.ndarray, nir_level: float) -> None:
        col = tuple(int(v) for v in np.clip(rgb * 255, 0, 255))
        getattr(dv, shape)(box, fill=col)
        getattr(dn, shape)(box, fill=int(np.clip(nir_level * 255, 0, 255)))

    top, bottom = _hsv_colour(r, (0.0, 0.5), (0.35, 0.95)), _hsv_colour(r, (0.0, 0.5), (0.2, 0.8))
    n_top, n_bottom = r.uniform(0.2, 0.7), r.uniform(0.2, 0.7)
    for y in range(h):
        t = y / max(1, h - 1)
        paint("line", [0, y, w, y], top + (bottom - top) * t, n_top + (n_bottom - n_top) * t)
    horizon = int(h * r.uniform(0.45, 0.75))
    paint("rectangle", [0, horizon, w, h], _hsv_colour(r, (0.0, 0.4), (0.2, 0.7)), r.uniform(0.2, 0.6))
    for _ in range(int(r.integers(3, 9))):  # doors, windows, shelves, trees, poles, signs
        x0 = r.uniform(-0.2, 1.0) * w
        y0 = r.uniform(0.0, 0.6) * horizon
        x1 = x0 + r.uniform(0.05, 0.45) * w
        y1 = min(horizon, y0 + r.uniform(0.1, 0.8) * horizon)
        if outdoor and r.uniform() < 0.5:  # vegetation: chlorophyll reflects NIR strongly
            paint("ellipse", [x0, y0, x1, y1], _hsv_colour(r, (0.4, 0.9), (0.2, 0.6)) * [0.6, 1.0, 0.5],
                  r.uniform(0.7, 0.95))
        else:
            rgb = _hsv_colour(r, (0.0, 0.8), (0.1, 1.0))
            paint("rectangle", [x0, y0, x1, y1], rgb, float(_LUMA @ rgb) * r.uniform(0.5, 1.5))
    for k in range(int(r.integers(0, 4))):  # floor tiles / road markings
        y = horizon + int((k + 1) * (h - horizon) / 5)
        paint("line", [0, y, w, y + int(r.uniform(-4, 4))], _hsv_colour(r, (0.0, 0.2), (0.1, 0.5)),
              r.uniform(0.1, 0.5))
    return vis, nir


def _background(layout_key: tuple[int, ...], h: int, w: int, sensor: str, outdoor: bool) -> np.ndarray:
    """A camera's background, float32 [H, W, 3] 0..255 in its sensor's terms.

    The layout (``layout_key``) is shared by cameras that look at the same room (SYSU cameras
    2 and 3); the sensor decides how it looks.
    """
    vis, nir = _scene(_rng(*layout_key), h, w, outdoor)
    if sensor == Sensor.VISIBLE:
        return np.asarray(vis, dtype=np.float32)
    r = _rng(*layout_key, 1)
    if sensor == Sensor.NIR:  # far from the illuminator: dim, structure kept
        grey = np.asarray(nir, dtype=np.float32) * r.uniform(0.3, 0.6)
    else:  # thermal: the scene is cool and nearly flat
        grey = np.asarray(vis.convert("L"), dtype=np.float32)
        grey = (r.uniform(0.1, 0.22) + 0.06 * grey / 255.0) * 255.0
        grey = np.asarray(Image.fromarray(grey.astype(np.uint8)).filter(ImageFilter.GaussianBlur(3)),
                          dtype=np.float32)
    return np.repeat(grey[..., None], 3, axis=2)


def make_camera(seed: int, dataset: int, cam: int, h: int, w: int, sensor: str,
                layout_cam: int, outdoor: bool) -> Camera:
    r = _rng(seed, _T_CAM, dataset, cam)
    view_p = r.dirichlet([1.0, 1.0, 1.0]) * 0.7 + 0.1
    visible = sensor == Sensor.VISIBLE
    occluder_rgb = _hsv_colour(r, (0.0, 0.6), (0.1, 0.8))
    occluder = (occluder_rgb * 255 if visible else
                np.full(3, float(_LUMA @ occluder_rgb) * r.uniform(0.5, 1.5) * 255 * (0.5 if sensor == Sensor.NIR else 0.3)))
    return Camera(
        sensor=sensor, view_p=view_p / view_p.sum(), scale=float(r.uniform(0.72, 1.0)),
        resolution=float(r.uniform(0.45, 1.0)),
        x_offset=float(r.uniform(-0.1, 0.1)), foot=float(r.uniform(0.9, 0.99)),
        background=_background((seed, _T_CAM, dataset, layout_cam, 7), h, w, sensor, outdoor),
        gain=float(r.uniform(0.7, 1.2)),
        cast=r.uniform(0.82, 1.18, 3).astype(np.float32) if visible else np.ones(3, np.float32),
        side_light=float(r.uniform(0.0, 0.35)) if visible else 0.0,
        blur=float(r.uniform(0.0, 1.0)) + (0.0 if visible else 0.4 if sensor == Sensor.NIR else 1.0),
        noise=float(r.uniform(2.0, 8.0)) * (1.0 if visible else 1.5),
        occlusion=float(r.uniform(0.05, 0.3)), occluder=np.asarray(occluder, np.float32),
    )


def _draw_person(ident: Identity, cam: Camera, r: np.random.Generator, h: int, w: int,
                 view: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Label map uint8 [H, W] of the person, and (centre x, neck, hip, body height) in pixels."""
    lab = Image.new("L", (w, h), BG)
    d = ImageDraw.Draw(lab)
    bh = ident.height * h * cam.scale * r.uniform(0.9, 1.06)
    foot = cam.foot * h + r.uniform(-0.03, 0.03) * h
    top = foot - bh
    cx = w * (0.5 + cam.x_offset + r.uniform(-0.07, 0.07))
    side = view == "side"
    sw = ident.shoulders * w * (0.62 if side else 1.0) * ident.build
    head_h = ident.head * bh
    head_w = head_h * 0.78
    hip = foot - ident.legs * bh
    neck = top + head_h * 1.08
    knee = hip + (foot - hip) * 0.45
    # legs (walking phase: spread)
    leg_w = sw * (0.5 if side else 0.38)
    spread = r.uniform(0.0, 0.1) * w
    if side:
        legs = [cx - leg_w / 2 - spread / 2, cx - leg_w / 2 + spread / 2]
    else:
        legs = [cx - sw * 0.24 - spread / 2 - leg_w / 2, cx + sw * 0.24 + spread / 2 - leg_w / 2]
    for x in legs:
        d.rectangle([x, hip, x + leg_w, foot], fill=SKIN if ident.lower_kind in (1, 2) else LOWER)
        if ident.lower_kind == 1:  # shorts
            d.rectangle([x, hip, x + leg_w, knee], fill=LOWER)
        d.rectangle([x - 1, foot - bh * 0.035, x + leg_w + (2 if side else 1), foot], fill=SHOE)
    if ident.lower_kind == 2:  # skirt
        d.polygon([(cx - sw * 0.45, hip - 1), (cx + sw * 0.45, hip - 1),
                   (cx + sw * 0.62, knee + 2), (cx - sw * 0.62, knee + 2)], fill=LOWER)
    # arms: sleeves are upper clothing, to the elbow or the wrist; hands (and forearms) skin
    arm_w = max(2.0, sw * 0.18)
    swing = r.uniform(-0.06, 0.06) * w
    arm_bottom = hip + (foot - hip) * 0.12
    elbow = neck + (arm_bottom - neck) * 0.5
    for sign in ((1,) if side else (-1, 1)):
        x = cx + sign * (sw / 2 + arm_w * 0.35) - arm_w / 2 + (swing if side else 0)
        d.rectangle([x, neck + 1, x + arm_w, arm_bottom], fill=SKIN)
        d.rectangle([x, neck + 1, x + arm_w, arm_bottom - bh * 0.04 if ident.long_sleeves else elbow],
                    fill=UPPER)
    # torso
    d.polygon([(cx - sw / 2, neck), (cx + sw / 2, neck), (cx + sw * 0.42, hip + 1),
               (cx - sw * 0.42, hip + 1)], fill=UPPER)
    # hair behind the head (shoulder length / long), head, hair on it
    hx0, hx1 = cx - head_w / 2, cx + head_w / 2
    if ident.hair and view != "front":
        length = neck + (hip - neck) * (0.25 if ident.hair == 1 else 0.6)
        d.rectangle([hx0 + (head_w * 0.3 if side else 0), top + head_h * 0.4, hx1, length], fill=HAIR)
    d.ellipse([hx0, top, hx1, top + head_h], fill=SKIN)
    if view == "back":
        d.ellipse([hx0, top, hx1, top + head_h], fill=HAIR)
    elif side:
        d.pieslice([hx0, top, hx1, top + head_h], 90, 330, fill=HAIR)
    else:
        d.chord([hx0, top, hx1, top + head_h], 180, 360, fill=HAIR)
        if ident.hair:  # hair falling beside the face
            length = neck + (hip - neck) * (0.1 if ident.hair == 1 else 0.45)
            for x0 in (hx0 - 1, hx1 - head_w * 0.18):
                d.rectangle([x0, top + head_h * 0.35, x0 + head_w * 0.2, length], fill=HAIR)
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
    labels = np.array(lab, dtype=np.uint8)
    # printed pattern on the upper garment, in body coordinates (the second dye)
    period = max(2.0, ident.period * bh)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = (yy - neck) / period + ident.phase, (xx - cx) / period
    if ident.pattern == 1:
        pattern = np.floor(yy) % 2 == 1
    elif ident.pattern == 2:
        pattern = np.floor(xx + ident.phase) % 2 == 1
    elif ident.pattern == 3:
        pattern = (np.floor(yy) + np.floor(xx)) % 2 == 1
    elif ident.pattern == 4:
        pattern = np.floor(yy + xx) % 2 == 1
    elif ident.pattern == 5:  # one wide chest band at a person-specific height
        rel = (yy - ident.phase) * period / max(1.0, hip - neck)
        pattern = np.abs(rel - (0.25 + 0.4 * ident.phase)) < 0.1
    else:
        pattern = np.zeros((h, w), bool)
    labels[pattern & (labels == UPPER)] = PATTERN
    if side and r.uniform() < 0.5:  # facing left or right
        labels = np.ascontiguousarray(labels[:, ::-1])
        cx = w - 1 - cx
    return labels, (cx, neck, hip, bh)


def _shading(labels: np.ndarray, cx: float, half_width: float, r: np.random.Generator) -> np.ndarray:
    """Geometry of the lit body, float32 [H, W]: cylinder shading across the body and a few
    garment folds; the same in every reflective band (visible and NIR)."""
    h, w = labels.shape
    xx = (np.arange(w, dtype=np.float32)[None, :] - cx) / max(half_width, 1.0)
    shade = np.broadcast_to(1.0 - 0.3 * np.clip(xx, -1.2, 1.2) ** 2, (h, w)).copy()
    yy, xg = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(int(r.integers(1, 4))):  # folds: thin darker diagonal bands on the garments
        y0, slope = r.uniform(0.3, 0.8) * h, r.uniform(-0.8, 0.8)
        fold = np.abs(yy - (y0 + slope * (xg - cx))) < max(0.6, h / 90)
        shade[fold & ((labels == UPPER) | (labels == LOWER) | (labels == PATTERN))] *= 0.78
    return shade


def render(ident: Identity, cam: Camera, r: np.random.Generator, h: int, w: int,
           view: str | None = None) -> np.ndarray:
    """One image, uint8 [H, W, 3] (NIR and thermal: three equal channels)."""
    view = view if view is not None else VIEWS[int(r.choice(3, p=cam.view_p))]
    labels, (cx, neck, hip, bh) = _draw_person(ident, cam, r, h, w, view)
    person = labels != BG
    shade = _shading(labels, cx, ident.shoulders * w * 0.6, r)
    mats = ident.materials
    if cam.sensor == Sensor.VISIBLE:
        table = np.stack([m.rgb for m in mats]) * 255.0  # [L,3]
        xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :, None]
        light = cam.gain * r.uniform(0.85, 1.15) * cam.cast * (1.0 + cam.side_light * r.choice([-1, 1]) * xs)
        img = np.where(person[..., None], table[labels] * shade[..., None], cam.background) * light
    elif cam.sensor == Sensor.NIR:
        table = np.asarray([m.nir for m in mats], np.float32) * 255.0  # [L]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        # active illuminator beside the lens: a bright centre and fall-off towards the edges
        spot = np.exp(-(((xx - w / 2) / (0.8 * w)) ** 2 + ((yy - 0.45 * h) / (0.9 * h)) ** 2))
        power = cam.gain * r.uniform(0.8, 1.15)
        grey = np.where(person, table[labels] * shade * power * (0.55 + 0.45 * spot), cam.background[..., 0])
        contrast = r.uniform(0.75, 1.0)  # low-contrast frames: toward mid-grey
        grey = 128.0 + (grey - 128.0) * contrast
        img = np.repeat(grey[..., None], 3, axis=2)
    else:  # thermal: emission, patterns nearly vanish, a warm band over the torso
        heat = np.asarray([m.heat for m in mats], np.float32)[labels]
        heat[labels == PATTERN] = mats[UPPER].heat * 0.97
        rows = np.arange(h, dtype=np.float32)[:, None]
        band = neck + ident.hot_spot * (hip - neck)
        upper = (labels == UPPER) | (labels == PATTERN)
        heat += upper * 0.18 * np.exp(-((rows - band) / (0.12 * h)) ** 2)
        grey = np.clip(heat, 0, 1) * 255.0 * r.uniform(0.9, 1.05)
        grey = np.where(person, grey, cam.background[..., 0]) * cam.gain * r.uniform(0.92, 1.08)
        img = np.repeat(grey[..., None], 3, axis=2)
    if r.uniform() < cam.occlusion:  # foreground object over part of the person
        img = img.copy()
        if r.uniform() < 0.6:  # furniture / railing from below
            y0 = int(hip + r.uniform(0.0, 0.7) * (h - hip))
            img[y0:, :] = cam.occluder
        else:  # a pole or a passer-by at the side
            x0 = int(cx + r.choice([-1, 1]) * r.uniform(0.0, 0.35) * w)
            width = int(r.uniform(0.15, 0.35) * w)
            img[:, max(0, x0 - width // 2):max(0, x0 + width // 2)] = cam.occluder
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    res = cam.resolution * r.uniform(0.9, 1.1)
    if res < 0.95:  # a lower-resolution sensor (or a farther person), upsampled
        small = (max(4, round(w * res)), max(8, round(h * res)))
        pil = pil.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
    radius = cam.blur + r.uniform(0.0, 0.3)
    if radius > 0.05:
        pil = pil.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(pil, dtype=np.float32)
    noise = r.normal(0.0, cam.noise, (h, w, 3 if cam.sensor == Sensor.VISIBLE else 1))
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


# SYSU cameras: (scene layout, outdoor); 1, 2 indoor rooms; 3 NIR in camera 2's room;
# 4, 5 outdoor; 6 NIR outdoor
SYSU_LAYOUT = {1: (1, False), 2: (2, False), 3: (2, False), 4: (4, True), 5: (5, True), 6: (6, True)}


def sysu_cameras_of(cfg: SyntheticConfig, ident: int) -> list[int]:
    """The cameras identity ``ident`` appears in: each with probability
    ``cfg.sysu_camera_presence``, redrawn until it has a visible and an infrared camera."""
    r = _rng(cfg.seed, _T_PRESENCE, _SYSU, ident)
    while True:
        cams = [c for c in SYSU_LAYOUT if r.uniform() < cfg.sysu_camera_presence]
        if any(c in INFRARED_CAMERAS for c in cams) and any(c not in INFRARED_CAMERAS for c in cams):
            return cams


def generate_sysu(root: str | os.PathLike[str], cfg: SyntheticConfig) -> Path:
    """Write a SYSU-MM01 tree at ``root`` (atomically: built aside, then renamed).

    ``cam{1..6}/{id:04d}/{n:04d}.jpg`` (``cfg.sysu_images_per_camera`` images for each camera
    an identity appears in, see :func:`sysu_cameras_of`) and ``exp/{train,val,test}_id.txt``.
    """
    h, w, n_img = cfg.image_height, cfg.image_width, cfg.sysu_images_per_camera
    splits = sysu_split_ids(cfg)
    ids = range(1, cfg.sysu_identities + 1)
    idents = {i: make_identity(cfg.seed, _SYSU, i) for i in ids}
    present = {i: sysu_cameras_of(cfg, i) for i in ids}
    t0, count = time.perf_counter(), 0
    with atomic_directory(root) as tmp:
        for cam, (layout, outdoor) in SYSU_LAYOUT.items():
            sensor = Sensor.NIR if cam in INFRARED_CAMERAS else Sensor.VISIBLE
            camera = make_camera(cfg.seed, _SYSU, cam, h, w, sensor, layout, outdoor)
            (tmp / f"cam{cam}").mkdir()
            for ident, look in idents.items():
                if cam not in present[ident]:
                    continue
                folder = tmp / f"cam{cam}" / f"{ident:04d}"
                folder.mkdir()
                for k in range(1, n_img + 1):
                    arr = render(look, camera, _rng(cfg.seed, _T_IMG, _SYSU, cam, ident, k), h, w)
                    (folder / f"{k:04d}.jpg").write_bytes(_encode(arr, "JPEG"))
                    count += 1
            log.info("synthetic SYSU-MM01: camera %d done (%d images so far, %.0f s)",
                     cam, count, time.perf_counter() - t0)
        (tmp / "exp").mkdir()
        for name, split_ids in splits.items():
            (tmp / "exp" / f"{name}_id.txt").write_text(",".join(str(i) for i in split_ids))
    log.info("generated synthetic SYSU-MM01 at %s: %d identities, %d images in %.1f s",
             root, len(idents), count, time.perf_counter() - t0)
    return Path(root)


def regdb_trial_ids(cfg: SyntheticConfig, trial: int) -> tuple[list[int], list[int]]:
    """(train ids, test ids) of one trial: a seeded half/half split of 1..N."""
    perm = _rng(cfg.seed, _T_SPLIT, _REGDB, trial).permutation(np.arange(1, cfg.regdb_identities + 1))
    half = cfg.regdb_identities // 2
    return sorted(int(i) for i in perm[:half]), sorted(int(i) for i in perm[half:])


def regdb_cameras(seed: int, h: int, w: int) -> dict[str, Camera]:
    """RegDB's visible and thermal cameras: side by side, so they share the view, distance and
    framing (the pair is co-registered); each keeps its own sensor, resolution, blur and noise."""
    vis = make_camera(seed, _REGDB, 1, h, w, Sensor.VISIBLE, 1, True)
    thermal = make_camera(seed, _REGDB, 2, h, w, Sensor.THERMAL, 1, True)
    thermal = dataclasses.replace(thermal, view_p=vis.view_p, scale=vis.scale, x_offset=vis.x_offset,
                                  foot=vis.foot)
    return {"visible": vis, "thermal": thermal}


def generate_regdb(root: str | os.PathLike[str], cfg: SyntheticConfig) -> Path:
    """Write a RegDB tree at ``root`` (atomically): ``Visible/<id>/``, ``Thermal/<id>/`` (BMP)
    and ``idx/{train,test}_{visible,thermal}_{1..10}.txt`` (``<path> <identity>`` lines).

    As in RegDB, the k-th visible and thermal images of a person are a co-registered pair:
    same pose and view, seen by the two cameras (one outdoor scene, a visible and a thermal
    sensor).
    """
    h, w, n_img = cfg.image_height, cfg.image_width, cfg.regdb_images_per_modality
    ids = list(range(1, cfg.regdb_identities + 1))
    cams = regdb_cameras(cfg.seed, h, w)
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
