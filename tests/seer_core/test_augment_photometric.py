"""Colour ops (CPU affine and batched device version) against torchvision; batching order."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from seer_core.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    BatchPhotometric,
    PhotometricParams,
    collate_crops,
    crops_to_groups,
    normalize,
)
from seer_core.augment.colour import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    affine_planes,
    apply_photometric,
    compose_jitter,
    image_planes,
    sample_jitter,
)
from services.images.sample import paint_photo_like


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return paint_photo_like(96, 80, np.random.default_rng(5))


def _ours(img: Image.Image, order: list[int], factors: tuple | None, grey: bool = False):
    mean = np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(0)
    m, t = compose_jitter(order, factors, grey, mean)
    rows = 1 if grey else 3
    planes = affine_planes(image_planes(img), m[:rows], t[:rows])
    return np.repeat(planes, 3 // rows, axis=0).transpose(1, 2, 0).astype(np.float64)


def _mad(a: object, b: object) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


@pytest.mark.parametrize("factor", [0.2, 0.6, 1.4, 1.8])
def test_single_ops_match_torchvision(photo: Image.Image, factor: float) -> None:
    assert _mad(_ours(photo, [BRIGHTNESS], (factor, 1, 1, 0)),
                TF.adjust_brightness(photo, factor)) < 1.0
    assert _mad(_ours(photo, [CONTRAST], (1, factor, 1, 0)),
                TF.adjust_contrast(photo, factor)) < 1.0
    assert _mad(_ours(photo, [SATURATION], (1, 1, factor, 0)),
                TF.adjust_saturation(photo, factor)) < 1.0


def test_grayscale_matches_torchvision(photo: Image.Image) -> None:
    assert _mad(_ours(photo, [], None, grey=True), TF.to_grayscale(photo, 3)) < 0.6


@pytest.mark.parametrize("shift", [-0.2, -0.1, 0.1, 0.2])
def test_hue_approximates_torchvision(photo: Image.Image, shift: float) -> None:
    ref = TF.adjust_hue(photo, shift)
    # Documented approximation: clearly closer to torchvision than doing nothing.
    assert _mad(_ours(photo, [HUE], (1, 1, 1, shift)), ref) < 0.8 * _mad(photo, ref)
    # Exact on the primaries at a third of a turn: red -> green -> blue.
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    assert tuple(_ours(red, [HUE], (1, 1, 1, 1 / 3))[0, 0]) == (0, 255, 0)
    assert tuple(_ours(red, [HUE], (1, 1, 1, -1 / 3))[0, 0]) == (0, 0, 255)


def test_composition_equals_sequential_ops(photo: Image.Image) -> None:
    """Without intermediate clamping, the composed map is the ops applied one after another."""
    x = np.asarray(photo, dtype=np.float64).reshape(-1, 3)
    factors = (1.1, 0.7, 1.3, 0.05)
    order = [HUE, CONTRAST, BRIGHTNESS, SATURATION]
    m, t = compose_jitter(order, factors, False, x.mean(0))
    y = x.copy()
    luma = np.array([0.299, 0.587, 0.114])
    for op in order:
        if op == BRIGHTNESS:
            y = y * factors[0]
        elif op == CONTRAST:
            y = factors[1] * y + (1 - factors[1]) * (y @ luma).mean()
        elif op == SATURATION:
            y = factors[2] * y + (1 - factors[2]) * (y @ luma)[:, None]
        else:
            y = y @ compose_jitter([HUE], factors, False, np.zeros(3))[0].T
    np.testing.assert_allclose(x @ m.T + t, y, atol=1e-9)


def test_affine_planes_match_pil_matrix_convert(photo: Image.Image) -> None:
    """Same arithmetic as PIL's per-pixel matrix convert (float32, +0.5, clamp, truncate)."""
    rng = np.random.default_rng(0)
    planes = image_planes(photo)
    for _ in range(20):
        m = rng.uniform(-0.6, 1.6, size=(3, 3))
        t = rng.uniform(-80, 80, size=3)
        pil = photo.convert("RGB", matrix=tuple(np.concatenate([m, t[:, None]], 1).ravel()))
        ours = affine_planes(planes, m, t).transpose(1, 2, 0)
        diff = np.abs(ours.astype(int) - np.asarray(pil, dtype=int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float summation order only


def test_affine_planes_grayscale_is_one_plane(photo: Image.Image) -> None:
    m, t = compose_jitter([HUE, CONTRAST, BRIGHTNESS, SATURATION], (1.2, 0.7, 1.1, 0.1), True,
                          np.full(3, 120.0))
    out = affine_planes(image_planes(photo), m[:1], t[:1])
    assert out.shape == (1, photo.height, photo.width)
    full = affine_planes(image_planes(photo), m, t)
    assert full.shape[0] == 3 and np.array_equal(full[0], out[0])


def test_apply_photometric_statistics(photo: Image.Image) -> None:
    rng = random.Random(0)
    draws = [sample_jitter(PhotometricParams(), rng) for _ in range(300)]
    outs = [np.repeat(p, 3 // len(p), axis=0) for p in
            (apply_photometric(photo, d) for d in draws)]
    grey = np.mean([np.array_equal(o[0], o[1]) and np.array_equal(o[1], o[2]) for o in outs])
    unchanged = np.mean([np.array_equal(o, image_planes(photo)) for o in outs])
    assert 0.12 < grey < 0.28  # p_grayscale = 0.2
    assert 0.02 < unchanged < 0.12  # no jitter (0.2) x no grey (0.8) x no blur (0.5) = 0.08


def _batch(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    imgs = [paint_photo_like(size, size, np.random.default_rng([seed, i])) for i in range(n)]
    arr = np.stack([np.asarray(im) for im in imgs]).transpose(0, 3, 1, 2)
    return torch.from_numpy(arr.copy()).float() / 255


def test_batch_photometric_shapes_ranges_determinism() -> None:
    x = _batch()
    op = BatchPhotometric()
    y1 = op(x, generator=torch.Generator().manual_seed(3))
    y2 = op(x, generator=torch.Generator().manual_seed(3))
    y3 = op(x, generator=torch.Generator().manual_seed(4))
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert y1.min() >= 0 and y1.max() <= 1
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    assert op(x[:0]).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError):
        op(x.to(torch.uint8))
    grey = BatchPhotometric(PhotometricParams(p_grayscale=1.0))(x, torch.Generator())
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    same = BatchPhotometric(PhotometricParams(p_jitter=0, p_grayscale=0, p_blur=0))(x)
    assert torch.allclose(same, x, atol=1e-6)


def test_batch_affine_matches_cpu_composition() -> None:
    x = _batch(n=5)
    op = BatchPhotometric()
    draws = op.sample(5, torch.device("cpu"), torch.Generator().manual_seed(0))
    mean = x.mean(dim=(2, 3))
    m, t = op.colour_affine(draws, mean)
    for i in range(5):
        factors = tuple(float(draws[k][i]) for k in ("brightness", "contrast", "saturation", "hue"))
        ref_m, ref_t = compose_jitter([int(v) for v in draws["order"][i]], factors,
                                      bool(draws["grayscale"][i]), mean[i].double().numpy())
        np.testing.assert_allclose(m[i].numpy(), ref_m, atol=1e-5)
        np.testing.assert_allclose(t[i].numpy(), ref_t, atol=1e-5)


@pytest.mark.parametrize("factor", [0.6, 1.3])
def test_batch_single_ops_match_torchvision_tensor_ops(factor: float) -> None:
    x = _batch(n=3)
    op = BatchPhotometric()
    n = x.shape[0]
    ones, zeros = torch.ones(n), torch.zeros(n)
    base = {"order": torch.tensor([[0, 1, 2, 3]] * n), "brightness": ones, "contrast": ones,
            "saturation": ones, "hue": zeros, "grayscale": torch.zeros(n, dtype=torch.bool)}
    for key, ref in [("brightness", TF.adjust_brightness(x, factor)),
                     ("contrast", TF.adjust_contrast(x, factor)),
                     ("saturation", TF.adjust_saturation(x, factor))]:
        m, t = op.colour_affine({**base, key: ones * factor}, x.mean(dim=(2, 3)))
        y = (torch.einsum("nij,njhw->nihw", m, x) + t[:, :, None, None]).clamp(0, 1)
        assert (y - ref).abs().mean() < 2 / 255, key


def test_batch_blur_matches_torchvision_gaussian_blur() -> None:
    x = _batch(n=2, size=40)
    op = BatchPhotometric()
    sigma = torch.tensor([0.0, 1.5])
    y = op.blur(x, sigma)
    assert torch.allclose(y[0], x[0], atol=1e-6)
    ref = TF.gaussian_blur(x[1:], kernel_size=2 * op.radius + 1, sigma=1.5)
    assert (y[1:] - ref).abs().max() < 1e-4


def test_normalize() -> None:
    u8 = torch.randint(0, 256, (2, 4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator())
    out = normalize(u8)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    ref = (u8.float() / 255 - mean) / std
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(normalize(u8.float() / 255), ref, atol=1e-5)
    with pytest.raises(ValueError):
        normalize(torch.zeros(2, 4, 8, 8))


def test_collate_and_crop_major_order() -> None:
    recipe = RECIPES["seer"]
    sizes = [g.size for g in recipe.groups for _ in range(g.count)]
    # crop value = 10 * image + crop index: order is visible in every pixel
    samples = [[torch.full((3, s, s), 10 * b + c, dtype=torch.uint8) for c, s in enumerate(sizes)]
               for b in range(3)]
    batch = collate_crops(samples, recipe)
    assert list(batch) == list(recipe.keys)
    assert batch["crops_224"].shape == (3, 2, 3, 224, 224)
    assert batch["crops_96"].shape == (3, 4, 3, 96, 96)
    assert int(batch["crops_96"][1, 2, 0, 0, 0]) == 10 * 1 + 2 + 2
    groups = crops_to_groups({k: v.numpy() for k, v in batch.items()}, recipe)
    assert [tuple(g.shape) for g in groups] == [(6, 3, 224, 224), (12, 3, 96, 96)]
    # crop-major: crop 0 of images 0,1,2, then crop 1 of images 0,1,2, ...
    assert [int(v) for v in groups[0][:, 0, 0, 0]] == [0, 10, 20, 1, 11, 21]
    expected_local = [10 * b + c for c in range(2, 6) for b in range(3)]
    assert [int(v) for v in groups[1][:, 0, 0, 0]] == expected_local
    with pytest.raises(ValueError, match="crops"):
        collate_crops([samples[0][:5]], recipe)
    with pytest.raises(ValueError, match="uint8"):
        collate_crops([[c.float() for c in samples[0]]], recipe)
    with pytest.raises(KeyError):
        crops_to_groups({"crops_224": batch["crops_224"]}, recipe)


def test_hue_matrices_are_rotations() -> None:
    from seer_core.augment.photometric import hue_matrices

    m = hue_matrices(torch.tensor([0.0, 0.1, -0.25, 1 / 3]))
    eye = torch.eye(3).expand(4, 3, 3)
    assert torch.allclose(m @ m.transpose(1, 2), eye, atol=1e-6)
    assert torch.allclose(m @ torch.ones(3), torch.ones(4, 3), atol=1e-6)  # grey is kept
    assert torch.allclose(m[3] @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6)
    assert math.isclose(float(torch.det(m[1])), 1.0, rel_tol=1e-5)


def test_batch_grain_is_grey_noise_of_a_random_level_per_crop() -> None:
    params = PhotometricParams(p_jitter=0.0, p_grayscale=0.0, p_blur=0.0, grain=0.2)
    x = torch.full((64, 3, 16, 16), 0.5)
    y = BatchPhotometric(params)(x.clone(), torch.Generator().manual_seed(0))
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])  # grey
    levels = (y - x).std(dim=(1, 2, 3))
    # Per crop, a level drawn from 0 to the grain: spread over the range, none above it.
    assert float(levels.max()) < 0.2 * 1.2 and float(levels.min()) < 0.05
    assert float(levels.std()) > 0.03
    # Without grain nothing is drawn for it: the forward draws only what `sample` draws, so the
    # stream is the one it was before the knob existed; with grain it draws the noise too.
    plain = PhotometricParams(p_blur=0.0)
    a = BatchPhotometric(plain)(x.clone(), torch.Generator().manual_seed(1))
    b = BatchPhotometric(plain)(x.clone(), torch.Generator().manual_seed(1), strength=0.5)
    assert torch.equal(a, BatchPhotometric(plain)(x.clone(), torch.Generator().manual_seed(1)))
    assert not torch.equal(a, b)
    for grain, same in ((0.0, True), (0.2, False)):
        forward_gen, sample_gen = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
        stage = BatchPhotometric(PhotometricParams(p_blur=0.0, grain=grain))
        stage(x.clone(), forward_gen)
        stage.sample(64, x.device, sample_gen)
        assert torch.equal(forward_gen.get_state(), sample_gen.get_state()) is same
    assert PhotometricParams(grain=0.2).ramped(0.5).grain == pytest.approx(0.1)
    with pytest.raises(ValueError, match="grain"):
        PhotometricParams(grain=0.6)
