"""Multi-crop: recipes, overrides, crop shapes and order, box statistics, draft, seeding."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from seer_core.augment import (
    RECIPES,
    CropGroup,
    MultiCropRecipe,
    build_multicrop,
    decode_image,
    resolve_recipe,
    sample_crop_box,
)
from seer_core.augment.colour import image_planes
from seer_core.augment.crops import planes_to_tensor


def _jpeg(w: int, h: int, seed: int = 0, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return _jpeg(400, 300)


def test_recipes_definition() -> None:
    seer, swav, sslight = RECIPES["seer"], RECIPES["swav"], RECIPES["sslight"]
    assert (seer.n_crops, seer.n_global, seer.keys) == (6, 2, ("crops_224", "crops_96"))
    assert (swav.n_crops, swav.n_global) == (8, 2)
    assert sslight.keys == ("crops_224", "crops_128") and sslight.n_crops == 8
    assert sslight.groups[1].scale == (0.05, 0.3) and sslight.groups[0].interpolation == "bicubic"
    assert seer.groups[0].scale == (0.14, 1.0) and seer.groups[1].scale == (0.05, 0.14)
    assert all(g.ratio == (3 / 4, 4 / 3) for r in RECIPES.values() for g in r.groups)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_crops_shapes_dtype_order(name: str, photo: bytes) -> None:
    recipe = RECIPES[name]
    crops = build_multicrop(name, seed=0)(photo)
    expected = [(3, g.size, g.size) for g in recipe.groups for _ in range(g.count)]
    assert [tuple(c.shape) for c in crops] == expected
    assert all(c.dtype == torch.uint8 and c.is_contiguous() for c in crops)


def test_overrides() -> None:
    mc = build_multicrop("seer", global_size=64, local_size=32, n_local=3, n_global=1,
                         global_scale=(0.5, 1.0), local_scale=[0.1, 0.2],
                         interpolation="bicubic", seed=0)
    r = mc.recipe
    assert r.keys == ("crops_64", "crops_32") and (r.n_global, r.n_crops) == (1, 4)
    assert r.groups[0].scale == (0.5, 1.0) and r.groups[1].scale == (0.1, 0.2)
    assert {g.interpolation for g in r.groups} == {"bicubic"}
    assert [tuple(c.shape) for c in mc(_jpeg(120, 100))] == [(3, 64, 64)] + [(3, 32, 32)] * 3
    assert resolve_recipe("swav", {"n_local": 0}).keys == ("crops_224",)


def test_override_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"colour_size.*allowed keys.*global_size"):
        build_multicrop("seer", colour_size=3)
    with pytest.raises(ValueError, match="unknown multi-crop recipe"):
        build_multicrop("simclr")
    with pytest.raises(ValueError, match="scale"):
        build_multicrop("seer", global_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="interpolation"):
        build_multicrop("seer", interpolation="cubic-ish")
    with pytest.raises(ValueError, match="distinct sizes"):
        build_multicrop("seer", local_size=224)
    with pytest.raises(ValueError, match="count"):
        build_multicrop("seer", n_global=0)
    with pytest.raises(ValueError):
        CropGroup(2, 224, (0.0, 1.0))


def test_custom_recipe_object(photo: bytes) -> None:
    recipe = MultiCropRecipe((CropGroup(1, 48, (0.3, 1.0)),), name="tiny")
    crops = build_multicrop(recipe, seed=1)(photo)
    assert len(crops) == 1 and crops[0].shape == (3, 48, 48)


def test_seeded_reproducible(photo: bytes) -> None:
    a = build_multicrop("seer", seed=7)
    b = build_multicrop("seer", seed=7)
    first = [a(photo), a(photo)]
    second = [b(photo), b(photo)]
    for x, y in zip(first, second):
        assert all(torch.equal(u, v) for u, v in zip(x, y))
    assert not all(torch.equal(u, v) for u, v in zip(first[0], first[1]))
    other = build_multicrop("seer", seed=8)(photo)
    assert not all(torch.equal(u, v) for u, v in zip(first[0], other))
    a.rng.seed(7)
    assert all(torch.equal(u, v) for u, v in zip(a(photo), first[0]))


def test_geometric_only_keeps_colours() -> None:
    img = Image.new("RGB", (200, 150), (200, 40, 90))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    crops = build_multicrop("seer", seed=0, photometric=False)(buf.getvalue())
    for c in crops:
        assert torch.equal(c[:, 5, 5], torch.tensor([200, 40, 90], dtype=torch.uint8))
    # With colour distortion the same crops change colour (fixed seed: deterministic).
    coloured = build_multicrop("seer", seed=0, photometric=True)(buf.getvalue())
    assert sum(not torch.equal(c[:, 5, 5], torch.tensor([200, 40, 90], dtype=torch.uint8))
               for c in coloured) >= 3


def test_flip_in_tensor_copy() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    ref = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    assert torch.equal(planes_to_tensor(image_planes(img)), ref)
    assert torch.equal(planes_to_tensor(image_planes(img), flip=True), torch.flip(ref, dims=[2]))
    grey = img.convert("L")
    ref_grey = torch.from_numpy(np.asarray(grey).copy()).expand(3, -1, -1)
    for flip in (False, True):
        out = planes_to_tensor(image_planes(grey), flip=flip)
        assert out.is_contiguous() and out.shape == (3, 5, 7)
        assert torch.equal(out, torch.flip(ref_grey, dims=[2]) if flip else ref_grey)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


@pytest.mark.parametrize(("width", "height", "scale"),
                         [(640, 480, (0.14, 1.0)), (400, 400, (0.05, 0.14)), (900, 200, (0.3, 1))])
def test_box_sampler_matches_torchvision(width: int, height: int, scale: tuple) -> None:
    n, ratio = 4000, (3 / 4, 4 / 3)
    rng = random.Random(0)
    ours = np.array([sample_crop_box(width, height, scale, ratio, rng) for _ in range(n)], float)
    torch.manual_seed(0)
    dummy = torch.empty(1, height, width, dtype=torch.uint8)
    theirs = np.array([RandomResizedCrop.get_params(dummy, list(scale), list(ratio))
                       for _ in range(n)], float)
    crit = 1.95 * math.sqrt(2 / n)  # alpha = 0.001
    for boxes in (ours, theirs):
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + h <= height).all() and (left + w <= width).all()
    stats = {
        "area": lambda b: b[:, 2] * b[:, 3] / (width * height),
        "log_ratio": lambda b: np.log(b[:, 3] / b[:, 2]),
        "centre_x": lambda b: (b[:, 1] + b[:, 3] / 2) / width,
        "centre_y": lambda b: (b[:, 0] + b[:, 2] / 2) / height,
    }
    for name, f in stats.items():
        assert _ks(f(ours), f(theirs)) < crit, name


def test_draft_decode_reduces_jpeg_only() -> None:
    big = _jpeg(2400, 2400, quality=80)
    decoded = decode_image(big, reduction_for=lambda w, h: 2)
    assert decoded.reduction == 2 and decoded.image.size == (1200, 1200)
    assert (decoded.width, decoded.height) == (2400, 2400)
    png = io.BytesIO()
    Image.new("RGB", (2400, 2400)).save(png, "PNG")
    assert decode_image(png.getvalue(), reduction_for=lambda w, h: 4).reduction == 1  # JPEG only
    crops = build_multicrop("seer", seed=0, photometric=False)(big)
    assert [c.shape[-1] for c in crops] == [224, 224, 96, 96, 96, 96]


def test_reduced_decode_crops_match_full_decode() -> None:
    """A crop from the drafted image looks like the same crop from the full image."""
    data = _jpeg(2400, 2400, seed=3, quality=95)
    full = decode_image(data).image
    reduced = decode_image(data, reduction_for=lambda w, h: 2).image
    box = (600, 400, 1400, 1200)
    a = np.asarray(full.resize((224, 224), Image.Resampling.BILINEAR, box=box), float)
    b = np.asarray(reduced.resize((224, 224), Image.Resampling.BILINEAR,
                                  box=tuple(v / 2 for v in box)), float)
    assert np.abs(a - b).mean() < 2.0
