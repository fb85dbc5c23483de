"""A vocabulary of drawable object kinds, shared by the sample pool and the labelled set.

Why shared: a pretraining service proves that it learns when features trained on *unlabelled*
images get better at telling apart *labelled* ones it never saw. Offline, both must come from one
visual world: the sample pool (`seer seed`) shows these objects in clutter, at any scale and
colour, like uncurated photos; the labelled set (`seer seed --labelled`) shows one object per
image, and its class is the object's kind. The kind is a matter of *shape* only: colour, size,
rotation, position, background and texture are drawn independently of it, so raw pixels carry
almost no class information and a network must learn shape to score well.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import ImageDraw

Point = tuple[float, float]
Colour = tuple[int, int, int]
Draw = ImageDraw.ImageDraw
#: Paints one object: (draw, centre x, centre y, radius, angle, colour).
ObjectPainter = Callable[[Draw, float, float, float, float, Colour], None]


def _regular(n: int, r: float, angle: float, cx: float, cy: float) -> list[Point]:
    turns = [angle + 2 * math.pi * i / n for i in range(n)]
    return [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in turns]


def _rotate(points: list[Point], angle: float, cx: float, cy: float) -> list[Point]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _polygon(n: int) -> ObjectPainter:
    """A filled regular n-gon."""
    def paint(d: Draw, cx: float, cy: float, r: float, a: float, fill: Colour) -> None:
        d.polygon(_regular(n, r, a, cx, cy), fill=fill)
    return paint


def _outline(points: list[Point]) -> ObjectPainter:
    """A filled polygon given in units of the radius around the centre, turned by the angle."""
    def paint(d: Draw, cx: float, cy: float, r: float, a: float, fill: Colour) -> None:
        d.polygon(_rotate([(x * r, y * r) for x, y in points], a, cx, cy), fill=fill)
    return paint


def _disc(d: Draw, cx: float, cy: float, r: float, a: float, fill: Colour) -> None:
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)


def _star(d: Draw, cx: float, cy: float, r: float, a: float, fill: Colour) -> None:
    outer = _regular(5, r, a, cx, cy)
    inner = _regular(5, 0.42 * r, a + math.pi / 5, cx, cy)
    d.polygon([p for pair in zip(outer, inner) for p in pair], fill=fill)


def _ring(d: Draw, cx: float, cy: float, r: float, a: float, fill: Colour) -> None:
    d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, round(0.3 * r)))


def _crescent(d: Draw, cx: float, cy: float, r: float, a: float, fill: Colour) -> None:
    # A disc minus a shifted disc (offset 0.45 r, radius 0.8 r), as one polygon: the outer arc
    # between the two circles' intersections, then the inner arc back.
    off, inner = 0.45, 0.8
    x = (1 - inner**2 + off**2) / (2 * off)
    y = math.sqrt(1 - x * x)
    outer_from = math.atan2(y, x)
    inner_from = math.atan2(y, x - off)
    pts: list[Point] = []
    for i in range(33):
        t = outer_from + (2 * math.pi - 2 * outer_from) * i / 32
        pts.append((r * math.cos(t), r * math.sin(t)))
    for i in range(33):
        t = (2 * math.pi - inner_from) - (2 * math.pi - 2 * inner_from) * i / 32
        pts.append((r * (off + inner * math.cos(t)), r * inner * math.sin(t)))
    d.polygon(_rotate(pts, a, cx, cy), fill=fill)


def _frame(d: Draw, cx: float, cy: float, r: float, a: float, fill: Colour) -> None:
    d.polygon(_regular(4, r, a, cx, cy), outline=fill, width=max(2, round(0.25 * r)))


def _bars(d: Draw, cx: float, cy: float, r: float, a: float, fill: Colour) -> None:
    # Three parallel bars: a striped object, told apart from the others by its texture.
    w = 0.2 * r
    for k in (-1, 0, 1):
        x = k * 0.62 * r
        bar = [(x - w, -r), (x + w, -r), (x + w, r), (x - w, r)]
        d.polygon(_rotate(bar, a, cx, cy), fill=fill)


#: The object kinds, in label order.
OBJECT_KINDS: dict[str, ObjectPainter] = {
    "disc": _disc,
    "square": _polygon(4),
    "triangle": _polygon(3),
    "star": _star,
    "cross": _outline([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3),
                       (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]),
    "ring": _ring,
    "crescent": _crescent,
    "arrow": _outline([(-1, -0.22), (0.1, -0.22), (0.1, -0.65), (1, 0.0), (0.1, 0.65),
                       (0.1, 0.22), (-1, 0.22)]),
    "frame": _frame,
    "bars": _bars,
}


def random_colour(rng: np.random.Generator) -> Colour:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def draw_object(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, radius: float,
                rng: np.random.Generator, colour: Colour | None = None) -> None:
    """Draws one object of `kind`, rotated at random, in a random colour unless one is given."""
    painter = OBJECT_KINDS[kind]
    painter(draw, cx, cy, radius, float(rng.uniform(0, 2 * math.pi)),
            colour if colour is not None else random_colour(rng))
