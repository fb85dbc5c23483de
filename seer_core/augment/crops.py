"""Multi-crop: encoded bytes -> the recipe's crops, as uint8 tensors, in one decode.

Speed is the point of this module (the ingest CPUs must keep GPUs fed): an image is decoded once,
and every random choice for it (boxes, flips, colour) is drawn from the header's size *before*
decoding, so that a JPEG can be decoded at 1/2, 1/4 or 1/8 scale whenever none of *this image's*
boxes would then have fewer pixels than its output (`box_reduction`); each crop is resampled
straight from the decoded image (`Image.resize(box=...)`, no intermediate crop copy); the colour
jitter is one matrix product over the crop's planes (see `colour.py`).
Normalisation happens later, on the trainer's device, because uint8 is 4x smaller on the wire.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .colour import JitterDraw, PhotometricParams, apply_photometric, image_planes, sample_jitter
from .decode import DecodedImage, decode_image
from .recipes import CropGroup, MultiCropRecipe, resolve_recipe

# Two-step resampling (integer `reduce` first, then a filter over at least this ratio): several
# times faster for the large downscales of global crops, visually indistinguishable.
REDUCING_GAP = 2.0
DRAFT_REDUCTIONS = (8, 4, 2)
_MULTICROP_OPTIONS = ("photometric", "max_pixels", "min_side", "params")

# One crop's random choices: (group, full-resolution (top, left, h, w) box, mirror?, colour draw
# or None when the colour stage is left to the trainer's device).
CropPlan = tuple[CropGroup, tuple[int, int, int, int], bool, JitterDraw | None]


def sample_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: random.Random,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop, with torchvision's RandomResizedCrop distribution.

    Same algorithm as `RandomResizedCrop.get_params` (area uniform in `scale`, aspect ratio
    log-uniform in `ratio`, ten tries, then a central crop clamped to `ratio`), but drawing
    from a `random.Random` so that a MultiCrop's randomness is its own and cheap per draw.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return top, left, h, w
    return _central_box(width, height, ratio)


def _central_box(width: int, height: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def box_reduction(boxes: Sequence[tuple[int, int, int, int]], sizes: Sequence[int]) -> int:
    """The largest JPEG draft reduction (8, 4, 2, else 1) under which no given crop loses pixels.

    `boxes` are (top, left, h, w) at full resolution, `sizes` their output sides: a reduction k
    is allowed when every box still spans at least its output size per side after dividing by
    k, so each resize stays a downscale (or as much of an upscale as at full resolution: a box
    already smaller than its output forbids any reduction). It looks at the boxes actually drawn
    for the image, not the worst the recipe could draw, which is what lets ~1080 px photos
    decode at half size most of the time (the worst case would forbid it for every one).
    """
    side = min((min(b[2], b[3]) / s for b, s in zip(boxes, sizes, strict=True)), default=0.0)
    return next((k for k in DRAFT_REDUCTIONS if side >= k), 1)


def planes_to_tensor(planes: np.ndarray, flip: bool = False) -> torch.Tensor:
    """uint8 planes [3 or 1, h, w] as a contiguous uint8 [3, h, w] tensor, optionally mirrored.

    One plane (a grayscale crop) fills all three. The mirror is `torch.flip`, one vectorised
    copy about 4x faster than numpy's negative-stride copy; colour ops and the blur commute
    with it, so it is done last, on the final planes (and on one plane for a grayscale crop).
    """
    t = torch.from_numpy(planes)
    if flip:
        t = torch.flip(t, dims=(2,))
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1).contiguous()
    return t


class MultiCrop:
    """Callable bytes -> list of uint8 [3, h, w] crops in recipe order (see `build_multicrop`).

    Not thread-safe (one generator per instance): give each worker thread its own.
    """

    def __init__(
        self,
        recipe: MultiCropRecipe,
        *,
        seed: int | None = None,
        photometric: bool = True,
        max_pixels: int = 64_000_000,
        min_side: int = 32,
        params: PhotometricParams | None = None,
    ) -> None:
        self.recipe = recipe
        self.photometric = photometric
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.params = params or PhotometricParams()
        #: Every random choice's stream: `rng.seed(s)` replays from seed `s`.
        self.rng = random.Random(seed)

    def _plan(self, width: int, height: int) -> list[CropPlan]:
        """Every random choice for one image, in recipe order: (group, box, flip, colour draw)."""
        rng = self.rng
        plan = []
        for group in self.recipe.groups:
            for _ in range(group.count):
                box = sample_crop_box(width, height, group.scale, group.ratio, rng)
                flip = rng.random() < 0.5
                draw = sample_jitter(self.params, rng) if self.photometric else None
                plan.append((group, box, flip, draw))
        return plan

    def decode_and_plan(self, data: bytes) -> tuple[DecodedImage, list[CropPlan]]:
        """Draw every random choice from the header's size, then decode as reduced as they allow.
        Public because the multicrop benchmark and the draft tests time and inspect this stage
        alone (its ``reduction``), apart from the crops ``__call__`` then cuts.

        The boxes are drawn in the upright frame before any pixel is decoded (same distribution
        and draw order as sampling after a full decode), so the draft reduction can depend on
        them (`box_reduction`); `DecodedImage.map_box` maps them into whatever was decoded.
        """
        plan: list[CropPlan] = []

        def reduction_for(width: int, height: int) -> int:
            plan.extend(self._plan(width, height))
            return box_reduction([p[1] for p in plan], [p[0].size for p in plan])

        decoded = decode_image(
            data,
            max_pixels=self.max_pixels,
            min_side=self.min_side,
            reduction_for=reduction_for,
        )
        return decoded, plan

    def __call__(self, data: bytes) -> list[torch.Tensor]:
        decoded, plan = self.decode_and_plan(data)
        img = decoded.image
        out: list[torch.Tensor] = []
        for group, box, flip, draw in plan:
            crop = img.resize(
                (group.size, group.size),
                group.resample,
                box=decoded.map_box(*box),
                reducing_gap=REDUCING_GAP,
            )
            # Colour ops and the blur commute with a mirror: flip once, at the end.
            planes = apply_photometric(crop, draw) if draw is not None else image_planes(crop)
            out.append(planes_to_tensor(planes, flip))
        return out


def build_multicrop(
    recipe: str | MultiCropRecipe = "seer", *, seed: int | None = None, **kwargs: Any
) -> MultiCrop:
    """The multi-crop transform of a named recipe (or a given one) with `resolve_recipe`'s
    overrides. With `photometric=False` crops are only geometrically augmented (crop, resize,
    flip) and `BatchPhotometric` does the colour part on the trainer's device."""
    options = {k: kwargs.pop(k) for k in _MULTICROP_OPTIONS if k in kwargs}
    return MultiCrop(resolve_recipe(recipe, kwargs), seed=seed, **options)
