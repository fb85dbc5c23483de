"""The object vocabulary: every kind draws a visible object of about the asked size, the kinds
differ in shape, and drawing is a function of the generator alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from services.images.shapes import OBJECT_KINDS, draw_object, random_colour

SIDE = 96
CENTRE = 48.0
RADIUS = 24.0
WHITE = (255, 255, 255)


def _mask(kind: str, angle: float, cx: float = CENTRE, cy: float = CENTRE,
          radius: float = RADIUS, side: int = SIDE) -> np.ndarray:
    """Pixels a kind paints on a black canvas, in white, at a fixed angle."""
    img = Image.new("RGB", (side, side))
    OBJECT_KINDS[kind](ImageDraw.Draw(img), cx, cy, radius, angle, WHITE)
    return np.asarray(img).any(axis=2)


def test_vocabulary_has_ten_named_kinds() -> None:
    assert len(OBJECT_KINDS) == 10
    assert all(name.isidentifier() and name.islower() for name in OBJECT_KINDS)


@pytest.mark.parametrize("kind", list(OBJECT_KINDS))
def test_every_kind_draws_a_visible_object_of_about_its_radius(kind: str) -> None:
    disc_area = math.pi * RADIUS**2
    for angle in np.linspace(0.0, 2 * math.pi, 7):
        mask = _mask(kind, float(angle))
        ys, xs = np.nonzero(mask)
        distance = np.hypot(xs - CENTRE, ys - CENTRE)
        # Visible: at least a fifth of the disc of that radius (outlined kinds are the thinnest).
        assert mask.sum() >= 0.2 * disc_area, (kind, angle, int(mask.sum()))
        # About its radius: it reaches out to the radius, and not much beyond (the bars' corners
        # stick out furthest, at 1.3 r).
        assert distance.max() >= 0.9 * RADIUS, (kind, angle)
        assert distance.max() <= 1.45 * RADIUS + 1, (kind, angle)


@pytest.mark.parametrize("kind", list(OBJECT_KINDS))
def test_objects_partly_off_the_canvas_or_tiny_are_clipped_not_errors(kind: str) -> None:
    """The sample pool puts centres anywhere in the image, with radii down to a few pixels."""
    for cx, cy in ((0.0, 0.0), (40.0, -5.0), (47.5, 20.0)):
        mask = _mask(kind, 1.0, cx, cy, radius=20.0, side=48)
        assert mask.shape == (48, 48) and mask.any()
    assert _mask(kind, 1.0, radius=2.0).sum() > 0


def test_kinds_differ_in_shape() -> None:
    """Same centre, radius and angle: every pair of kinds differs in a good share of pixels."""
    masks = {kind: _mask(kind, 0.3) for kind in OBJECT_KINDS}
    kinds = list(masks)
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            union = (masks[a] | masks[b]).sum()
            assert (masks[a] ^ masks[b]).sum() >= 0.1 * union, (a, b)


def test_rotation_changes_the_non_round_kinds() -> None:
    for kind in OBJECT_KINDS:
        if kind in ("disc", "ring"):
            continue
        assert not np.array_equal(_mask(kind, 0.1), _mask(kind, 0.9)), kind


def _drawn(kind: str, seed: int, colour: tuple[int, int, int] | None = None) -> bytes:
    img = Image.new("RGB", (64, 64), (10, 20, 30))
    draw_object(ImageDraw.Draw(img), kind, 31.5, 30.25, 18.0, np.random.default_rng(seed),
                colour=colour)
    return img.tobytes()


def test_drawing_is_deterministic_given_the_generator() -> None:
    for kind in OBJECT_KINDS:
        assert _drawn(kind, 7) == _drawn(kind, 7), kind
        # Another generator: another angle and colour (a disc changes by its colour alone).
        assert _drawn(kind, 7) != _drawn(kind, 8), kind
        # A given colour is used as is, and only the angle is random.
        img = np.frombuffer(_drawn(kind, 7, colour=(200, 100, 50)), np.uint8).reshape(64, 64, 3)
        painted = {tuple(p) for p in img.reshape(-1, 3)} - {(10, 20, 30)}
        assert painted == {(200, 100, 50)}, kind


def test_random_colour_is_three_bytes_and_seeded() -> None:
    colours = [random_colour(np.random.default_rng(s)) for s in range(20)]
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
               for c in colours)
    assert random_colour(np.random.default_rng(3)) == colours[3]
    assert len(set(colours)) > 15
