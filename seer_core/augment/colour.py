"""Colour jitter and grayscale as one affine colour map, composed on the CPU per crop.

Brightness, saturation, hue (approximated as a rotation about the grey axis) and grayscale
are linear maps of RGB; contrast is affine given the image's mean grey level. Whatever their
random order, the whole jitter therefore composes into a 3x3 matrix plus an offset, which PIL
applies to a crop as one 3x3 matrix product over its pixel planes (`affine_planes`), instead of
four passes plus an HSV round trip as torchvision does.

Approximations, against torchvision's `ColorJitter`, documented and tested per op:
- values are clamped to [0, 255] once at the end, not after every op: pixels that saturate
  mid-chain (a bright pixel brightened, then contrast reduced) come out less saturated;
- the contrast mean is that of the crop propagated through the previous (unclamped) ops;
- hue is a rotation by 2*pi*h about the grey axis instead of an HSV hue shift (not linear:
  HSV moves colours along a hexagon, a rotation along a circle): same direction and turn, exact
  for the primaries at 1/3 turn. Measured on synthetic photos, its mean error relative to the
  effect of torchvision's shift is 0.41 at h = 0.2, 0.69 at 0.1, 0.86 at 0.05: the augmentation
  has the same strength and direction, not the same pixels. (A YIQ rotation, the usual linear
  hue, was worse here: I and Q are not scaled alike, so it distorts chroma.)
The same maps exist as batched tensor ops in `photometric.py`, so CPU and device agree.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# ITU-R 601-2 luma: what PIL's "L" conversion and torchvision's rgb_to_grayscale use.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


@dataclass(frozen=True)
class PhotometricParams:
    """The SwAV/SEER colour distortion and blur; defaults are the papers' values.

    jitter strengths follow torchvision's ColorJitter convention (brightness 0.8 means a
    factor in [0.2, 1.8], hue 0.2 means a shift in [-0.2, 0.2] of a turn).
    """

    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    p_jitter: float = 0.8
    p_grayscale: float = 0.2
    p_blur: float = 0.5
    sigma: tuple[float, float] = (0.1, 2.0)
    grain: float = 0.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        for name in ("p_jitter", "p_grayscale", "p_blur"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        if not 0.0 < self.sigma[0] <= self.sigma[1]:
            raise ValueError(f"sigma must satisfy 0 < lo <= hi, got {self.sigma}")
        if not 0.0 <= self.grain <= 0.5:
            raise ValueError(f"grain must be in [0, 0.5], got {self.grain}")

    def ramped(self, strength: float) -> PhotometricParams:
        """The colour distortion at `strength` in [0, 1] of its full size; the blur unchanged.

        Why: under full SwAV colour distortion, two views of a synthetic or small image share
        too little that a randomly initialised network can see, and SwAV sits at ln K (nothing
        learned) for longer than a short run lasts; with weaker jitter it learns at once, and
        raising the jitter step by step moves the features from colour to shape
        (`augment.photometric_ramp_steps`). Jitter factors and the grayscale probability scale;
        the jitter probability stays, so the ramp changes how far colours move, not how often.
        The grain (device path only) scales with them: it is a distortion of the same kind.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        return dataclasses.replace(
            self,
            brightness=self.brightness * strength,
            contrast=self.contrast * strength,
            saturation=self.saturation * strength,
            hue=self.hue * strength,
            p_grayscale=self.p_grayscale * strength,
            grain=self.grain * strength,
        )


_EYE = np.eye(3)
_GREY_PROJ = np.outer(np.ones(3), LUMA)  # every output channel = luma
_ZERO = np.zeros(3)
# Hue: a rotation about the grey axis (Rodrigues' formula about (1, 1, 1)), red -> green for a
# positive shift. HSV's hue is the angle around that axis measured on a hexagon; the rotation is
# the linear map closest to it: same direction and turn, exact for 120-degree steps, mean
# intensity kept where HSV keeps the maximum.
_GREY_AXIS = np.full((3, 3), 1.0 / 3.0)  # projection onto (1, 1, 1)/sqrt(3)
_GREY_CROSS = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)


def compose_jitter(
    order: list[int] | tuple[int, ...],
    factors: tuple[float, float, float, float] | None,
    grayscale: bool,
    mean_rgb: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The affine map x -> M x + t of the jitter (ops in `order`) followed by grayscale.

    `factors` is (brightness, contrast, saturation, hue), or None when the jitter is not
    applied; `mean_rgb` is the crop's mean colour before any op, in pixel units (contrast blends
    with the mean grey level of the image as it is at that point; saturation with each pixel's
    own luma).
    """
    m, t = _EYE, _ZERO
    if factors is not None:
        for op in order:
            b = _ZERO
            if op == BRIGHTNESS:
                a = _EYE * factors[0]
            elif op == CONTRAST:
                grey = float(LUMA @ (m @ mean_rgb + t))
                a, b = _EYE * factors[1], np.full(3, (1.0 - factors[1]) * grey)
            elif op == SATURATION:
                a = factors[2] * _EYE + (1.0 - factors[2]) * _GREY_PROJ
            else:
                theta = 2.0 * math.pi * factors[3]
                c, s = math.cos(theta), math.sin(theta)
                a = c * _EYE + (1.0 - c) * _GREY_AXIS + s * _GREY_CROSS
            m, t = a @ m, a @ t + b
    if grayscale:
        m, t = _GREY_PROJ @ m, _GREY_PROJ @ t
    return m, t


def image_planes(img: Image.Image) -> np.ndarray:
    """An "RGB" or "L" PIL image as contiguous uint8 planes [3 or 1, h, w].

    One `tobytes` per band: PIL packs a single band in C, so planar data costs three small
    copies instead of an interleaved copy plus a strided transpose (several times slower).
    """
    w, h = img.size
    bands = ("L",) if img.mode == "L" else ("R", "G", "B")
    out = np.empty((len(bands), h, w), dtype=np.uint8)
    for i, band in enumerate(bands):
        out[i] = np.frombuffer(img.tobytes("raw", band), dtype=np.uint8).reshape(h, w)
    return out


def planes_image(planes: np.ndarray) -> Image.Image:
    """uint8 planes [3 or 1, h, w] back to a PIL "RGB" or "L" image (for PIL's blur)."""
    _, h, w = planes.shape
    bands = [Image.frombuffer("L", (w, h), np.ascontiguousarray(p), "raw", "L", 0, 1)
             for p in planes]
    return bands[0] if len(bands) == 1 else Image.merge("RGB", bands)


def affine_planes(planes: np.ndarray, m: np.ndarray, t: np.ndarray) -> np.ndarray:
    """x -> M x + t on uint8 RGB planes [3, h, w]: uint8 planes [r, h, w] for M [r, 3], t [r].

    Same arithmetic as PIL's `convert("RGB", matrix)` (float32, +0.5, clamp, truncate), but as
    one matrix product over all pixels instead of PIL's scalar per-pixel loop: about half the
    time per crop. A grayscale map passes its one distinct row (r = 1).
    """
    _, h, w = planes.shape
    x = planes.reshape(3, h * w).astype(np.float32)
    y = m.astype(np.float32) @ x
    y += (t + 0.5).astype(np.float32)[:, None]
    np.clip(y, 0.0, 255.0, out=y)
    return y.astype(np.uint8).reshape(len(m), h, w)


# (order, factors or None, grayscale?, blur sigma or None), as drawn by `sample_jitter`.
JitterDraw = tuple[list[int], tuple[float, float, float, float] | None, bool, float | None]


def sample_jitter(params: PhotometricParams, rng: random.Random) -> JitterDraw:
    """Draw (order, factors or None, grayscale?, blur sigma or None) like SwAV's pipeline does."""
    factors = None
    order = [BRIGHTNESS, CONTRAST, SATURATION, HUE]
    if rng.random() < params.p_jitter:
        rng.shuffle(order)
        factors = (
            rng.uniform(1.0 - params.brightness, 1.0 + params.brightness),
            rng.uniform(1.0 - params.contrast, 1.0 + params.contrast),
            rng.uniform(1.0 - params.saturation, 1.0 + params.saturation),
            rng.uniform(-params.hue, params.hue),
        )
    grayscale = rng.random() < params.p_grayscale
    sigma = rng.uniform(*params.sigma) if rng.random() < params.p_blur else None
    return order, factors, grayscale, sigma


def _mean_rgb(img: Image.Image) -> np.ndarray:
    """Mean colour by a 1x1 box reduction in C (10x cheaper than ImageStat; +-0.5 rounding)."""
    return np.asarray(img.reduce(img.size).getpixel((0, 0)), dtype=np.float64)


def _blur(img: Image.Image, sigma: float) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=sigma))


def apply_photometric(img: Image.Image, draw: JitterDraw) -> np.ndarray:
    """Apply a `sample_jitter` draw to an RGB crop: one affine colour pass, then the blur.

    Returns uint8 planes [3, h, w], or [1, h, w] for a grayscale crop: its composed map has
    three equal rows, so one plane (a third of the work and of the bytes to blur and copy)
    holds the whole result; expanding it to three is left to the final tensor copy.
    """
    order, factors, grayscale, sigma = draw
    if factors is None and not grayscale:
        return image_planes(img if sigma is None else _blur(img, sigma))
    mean = _mean_rgb(img) if factors else _ZERO
    m, t = compose_jitter(order, factors, grayscale, mean)
    rows = 1 if grayscale else 3  # a grayscale map's three rows are equal
    planes = affine_planes(image_planes(img), m[:rows], t[:rows])
    if sigma is not None:
        planes = image_planes(_blur(planes_image(planes), sigma))
    return planes

