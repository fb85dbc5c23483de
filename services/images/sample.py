"""Synthetic, photo-like sample images, so that a fresh checkout can train and benchmark offline.

Nothing may be downloaded (no weights, no data sets), yet the ingest path must be exercised on
inputs that look like the real stream: JPEG-compressed, varied sizes and aspect ratios, smooth
gradients with edges and texture (so that crops, blur and colour jitter behave as on photos), the
odd PNG, and a few files whose EXIF orientation must be honoured. Everything is drawn with PIL's C
primitives (upscaled random fields, shapes, ``effect_noise``) because numpy at full resolution
would make `seer seed` take minutes instead of seconds.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from services.evaluator.progress import Progress
from services.images.shapes import OBJECT_KINDS, draw_object, random_colour

# Instagram-like aspect ratios (height / width): square, portrait 4:5, landscape 1.91:1.
_IG_ASPECTS = (1.0, 1.25, 1 / 1.91)
_EXIF_ORIENTATION = 0x0112


@functools.cache
def _noise_tile() -> Image.Image:
    """A fixed-seed grey noise tile, made once: per-image Gaussian noise was half the cost."""
    noise = np.random.default_rng(12345).normal(128.0, 48.0, size=(1024, 1024))
    return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), "L")


def _rng_for(seed: int, index: int) -> np.random.Generator:
    """One generator per image, so any image can be regenerated alone and in any order."""
    return np.random.default_rng([seed, index])


def colour_field(width: int, height: int, rng: np.random.Generator, max_grid: int) -> Image.Image:
    """A smooth random colour field: a 2..max_grid square grid of colours, upscaled bicubically."""
    grid = int(rng.integers(2, max_grid + 1))
    field = rng.integers(0, 256, size=(grid, grid, 3), dtype=np.uint8)
    return Image.fromarray(field, "RGB").resize((width, height), Image.Resampling.BICUBIC)


def paint_photo_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An RGB image with photo-like statistics: smooth illumination, objects, edges, texture.

    Layers, coarse to fine: a bicubic-upscaled random colour field (sky/background gradients),
    random filled shapes (objects with hard edges), an optional soft blur (depth of field), a
    grey noise texture blended in (sensor noise / foliage), and a random colour cast (white
    balance). Every layer is one C call in PIL, so a 1080-px image takes a few milliseconds.
    """
    img = colour_field(width, height, rng, max_grid=6)
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    for _ in range(int(rng.integers(3, 14))):
        x0 = int(rng.integers(-side // 4, width))
        y0 = int(rng.integers(-side // 4, height))
        w = int(rng.integers(side // 16, side // 2 + 2))
        h = int(rng.integers(side // 16, side // 2 + 2))
        colour = random_colour(rng)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            pts = [(x0 + int(rng.integers(0, w)), y0 + int(rng.integers(0, h))) for _ in range(3)]
            draw.polygon(pts, fill=colour)

    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 3.0))))

    img = add_grain(img, rng)
    return colour_cast(img, rng)


def add_objects(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Draws 1-4 objects of random kinds (radius 8-40% of the short side), then light grain."""
    draw = ImageDraw.Draw(img)
    side = min(img.size)
    kinds = list(OBJECT_KINDS)
    for _ in range(int(rng.integers(1, 5))):
        radius = side * float(rng.uniform(0.08, 0.4))
        cx = float(rng.uniform(0, img.width))
        cy = float(rng.uniform(0, img.height))
        draw_object(draw, kinds[int(rng.integers(0, len(kinds)))], cx, cy, radius, rng)
    return add_grain(img, rng, strength=0.15)


def add_grain(img: Image.Image, rng: np.random.Generator, strength: float = 0.3) -> Image.Image:
    """Blends in grey noise from a shared tile: a random window, stretched 1-4x (grain size)."""
    width, height = img.size
    tile = _noise_tile()
    stretch = float(rng.uniform(1.0, 4.0))
    bw = min(tile.width, max(1, round(width / stretch)))
    bh = min(tile.height, max(1, round(height / stretch)))
    x0 = int(rng.integers(0, tile.width - bw + 1))
    y0 = int(rng.integers(0, tile.height - bh + 1))
    noise = tile.resize((width, height), Image.Resampling.BILINEAR, box=(x0, y0, x0 + bw, y0 + bh))
    alpha = float(rng.uniform(0.05, strength))
    return Image.blend(img, Image.merge("RGB", (noise, noise, noise)), alpha)


def colour_cast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random white balance, as cameras differ."""
    cast = rng.uniform(0.8, 1.2, size=3)
    matrix = (cast[0], 0, 0, 0, 0, cast[1], 0, 0, 0, 0, cast[2], 0)
    return img.convert("RGB", matrix=tuple(float(v) for v in matrix))


def _save(img: Image.Image, path: Path, rng: np.random.Generator, orientation: int = 1) -> None:
    """Saves like a camera or a web upload would: PNG, or JPEG at a random quality."""
    if path.suffix == ".png":
        img.save(path, compress_level=1)
        return
    kwargs: dict[str, object] = {"quality": int(rng.integers(70, 96))}
    if orientation != 1:
        exif = Image.Exif()
        exif[_EXIF_ORIENTATION] = orientation
        kwargs["exif"] = exif
    img.save(path, **kwargs)


def generate_sample_images(out_dir: str | Path, count: int = 2000, *, seed: int = 0,
                           min_side: int = 256, max_side: int = 1280, progress: bool = True,
                           objects: bool = True) -> int:
    """Write `count` varied photo-like images into `out_dir`; returns how many were written.

    With `objects` (the default), each image also shows one to four objects of the shared
    vocabulary (`services.images.shapes`) at random scales, colours and places.
    About 85 % JPEG and 15 % PNG; sides drawn log-uniformly in [min_side, max_side] with aspect
    ratios between 1:2 and 2:1; about 5 % of the JPEGs carry an EXIF orientation other than 1
    (their pixels are stored transposed, as a camera would, so that decode must undo it).
    Deterministic in `seed`. Progress goes to stderr only when asked and the run is long.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 1 <= min_side <= max_side:
        raise ValueError(f"need 1 <= min_side <= max_side, got {min_side}, {max_side}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bar = Progress("sample images", tty=True) if progress and count >= 200 else None
    for i in range(count):
        rng = _rng_for(seed, i)
        long_side = int(np.exp(rng.uniform(np.log(min_side), np.log(max_side))))
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
        w, h = max(min_side, round(w)), max(min_side, round(h))
        img = paint_photo_like(w, h, rng)
        if objects:
            img = add_objects(img, rng)
        suffix = ".png" if rng.random() < 0.15 else ".jpg"
        orientation = 1
        if suffix == ".jpg" and rng.random() < 0.05:
            orientation = int(rng.choice([3, 6, 8]))
            # Store what a rotated camera would: the inverse of the display transform.
            inverse = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
                       8: Image.Transpose.ROTATE_270}[orientation]
            img = img.transpose(inverse)
        _save(img, out / f"sample_{i:06d}{suffix}", rng, orientation)
        if bar is not None:
            bar(i + 1, count)
    return count


def generate_photo_like_jpegs(out_dir: str | Path, count: int, side: int = 1080,
                              seed: int = 0) -> list[Path]:
    """Write `count` Instagram-sized JPEGs (width `side`, IG aspect ratios); returns their paths.

    Benchmarks and tests need the size the real stream has (decode cost scales with pixels),
    which the varied sample set does not guarantee.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = _rng_for(seed + 1_000_003, i)
        height = round(side * _IG_ASPECTS[int(rng.integers(0, len(_IG_ASPECTS)))])
        img = paint_photo_like(side, height, rng)
        paths.append(out / f"photo_{i:06d}.jpg")
        _save(img, paths[-1], rng)
    return paths
