"""Reduced-size JPEG decoding chosen from the image's own crop boxes: never loses resolution,
is used on typical ~1080 px photos, and maps boxes correctly through EXIF orientations."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
from PIL import Image

from seer_core.augment import box_reduction, build_multicrop, decode_image
from seer_core.augment.decode import _ORIENT_TRANSPOSE, draft_scale


def _jpeg(img: Image.Image, orientation: int = 1, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def _smooth(w: int, h: int, seed: int) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)


def _grating(w: int, h: int, period: float = 14.0) -> Image.Image:
    """Medium-frequency content: a one-pixel misregistration changes a crop visibly."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(2 * np.pi * x / period) * np.cos(2 * np.pi * y / (period * 1.3))
    g = 128 + 100 * np.sin(2 * np.pi * (x + y) / (period * 1.7))
    b = 128 + 60 * np.cos(2 * np.pi * y / period)
    return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8), "RGB")


def test_box_reduction_rule() -> None:
    # (top, left, h, w) boxes with their output sizes.
    assert box_reduction([(0, 0, 500, 460), (0, 0, 200, 250)], [224, 96]) == 2
    assert box_reduction([(0, 0, 500, 447), (0, 0, 400, 400)], [224, 96]) == 1  # 447/2 < 224
    assert box_reduction([(0, 0, 1800, 1900), (0, 0, 800, 790)], [224, 96]) == 8
    assert box_reduction([(0, 0, 1800, 1900), (0, 0, 300, 790)], [224, 96]) == 2  # 300/4 < 96
    assert box_reduction([(0, 0, 100, 100)], [224]) == 1  # already an upscale: never reduce
    assert box_reduction([], []) == 1


@pytest.mark.parametrize(("size", "orientation"),
                         [((1080, 1080), 1), ((1080, 1350), 1), ((1080, 565), 1),
                          ((1083, 1351), 6), ((1501, 997), 3), ((2001, 1203), 8)])
def test_no_crop_upsampled_more_than_at_full_decode(size: tuple[int, int],
                                                    orientation: int) -> None:
    data = _jpeg(_smooth(*size, seed=1), orientation, quality=80)
    mc = build_multicrop("seer", seed=0)
    reductions = set()
    for _ in range(12):
        decoded, plan = mc.decode_and_plan(data)
        reductions.add(decoded.reduction)
        upright = size[::-1] if orientation in (5, 6, 7, 8) else size
        assert (decoded.width, decoded.height) == upright
        k = decoded.reduction
        assert decoded.image.size == tuple(math.ceil(s / k) for s in upright)
        for group, (top, left, h, w), _, _ in plan:
            x0, y0, x1, y1 = decoded.map_box(top, left, h, w)
            # Box side in decoded pixels: never below the output size when the full-resolution
            # box had at least that many pixels.
            if min(h, w) >= group.size:
                assert min(x1 - x0, y1 - y0) >= group.size
            else:
                assert k == 1
            assert -1e-9 <= x0 < x1 <= decoded.image.size[0] + 1e-9
            assert -1e-9 <= y0 < y1 <= decoded.image.size[1] + 1e-9
    if min(size) >= 1000 and size != (1080, 565):
        assert 2 in reductions


def test_reduced_decode_used_on_1080_photo_for_most_seeds() -> None:
    data = _jpeg(_smooth(1080, 1080, seed=2), quality=85)
    mc = build_multicrop("seer", seed=0)
    ks = []
    for seed in range(40):
        mc.rng.seed(seed)
        ks.append(mc.decode_and_plan(data)[0].reduction)
    # Both global boxes need >= 448 px per side for half-size decoding: ~84% of draws.
    assert 0.65 <= ks.count(2) / len(ks) <= 0.97
    assert set(ks) <= {1, 2}
    # The worst-case rule this replaces would never reduce a 1080 px photo.
    crops = build_multicrop("seer", seed=3)(data)
    assert [tuple(c.shape) for c in crops] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 4


def test_seer_recipe_never_reduces_png_or_small_images() -> None:
    buf = io.BytesIO()
    _smooth(1080, 1080, seed=4).save(buf, "PNG")
    mc = build_multicrop("seer", seed=0)
    assert all(mc.decode_and_plan(buf.getvalue())[0].reduction == 1 for _ in range(5))
    small = _jpeg(_smooth(400, 300, seed=4))
    assert all(mc.decode_and_plan(small)[0].reduction == 1 for _ in range(5))


def test_draft_scale_matches_what_pil_does() -> None:
    for w, h, k in [(1081, 721, 2), (1080, 1350, 2), (2001, 1203, 4), (4001, 3001, 8),
                    (40, 33, 4)]:
        s = draft_scale(w, h, k)
        im = Image.open(io.BytesIO(_jpeg(_smooth(w, h, 0))))
        im.draft("RGB", (w // k, h // k))
        assert im.size == (math.ceil(w / s), math.ceil(h / s))
        assert s == k


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_crops_register_with_full_crops_under_exif(orientation: int) -> None:
    """Odd stored sizes: the partial last DCT block must not shift boxes after a flip."""
    upright = _grating(1081, 723)
    undo = {1: None, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}[orientation]
    stored = upright if undo is None else upright.transpose(_ORIENT_TRANSPOSE[undo])
    data = _jpeg(stored, orientation, quality=95)
    full = decode_image(data)
    half = decode_image(data, reduction_for=lambda w, h: 2)
    assert half.reduction == 2 and (half.width, half.height) == (1081, 723)
    assert np.abs(np.asarray(full.image, float) - np.asarray(upright, float)).mean() < 10
    rng = random.Random(orientation)
    errs, unshifted = [], []
    for _ in range(6):
        w, h = rng.randint(300, 600), rng.randint(300, 600)
        top, left = rng.choice([0, 723 - h]), rng.choice([0, 1081 - w])
        ref = np.asarray(full.image.resize((112, 112), Image.Resampling.BILINEAR,
                                           box=full.map_box(top, left, h, w)), float)
        got = half.image.resize((112, 112), Image.Resampling.BILINEAR,
                                box=half.map_box(top, left, h, w))
        errs.append(np.abs(np.asarray(got, float) - ref).mean())
        naive = tuple(v / 2 for v in (left, top, left + w, top + h))
        bad = half.image.resize((112, 112), Image.Resampling.BILINEAR, box=naive)
        unshifted.append(np.abs(np.asarray(bad, float) - ref).mean())
    assert max(errs) < 3.0
    if half.offset_x or half.offset_y:  # the naive mapping is measurably worse there
        assert np.mean(unshifted) > 1.5 * np.mean(errs)
    assert (half.offset_x != 0) == (orientation in (2, 3, 6, 7))
    assert (half.offset_y != 0) == (orientation in (3, 4, 7, 8))
