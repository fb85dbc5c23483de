"""Decoding untrusted bytes into an upright RGB image, or a reason why not.

The stream is random images from the internet: anything may arrive (HTML error pages saved as
.jpg, truncated uploads, CMYK scans, 16-bit PNGs, decompression bombs). Training must never stop
for one of them, so every failure becomes `ImageRejected` with a small, fixed set of reasons that
the ingest stage counts in a metric.

Images are opened through PIL's format plugins directly, restricted to a whitelist: PIL's own
decompression-bomb check would warn or raise at a limit that is not ours (and warnings are not
thread-safe to silence), and formats such as EPS would run external programs.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile

REJECT_REASONS: tuple[str, ...] = ("not_image", "corrupt", "too_small", "too_large")

# Formats a photo stream plausibly holds; anything else is "not_image".
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")

# Transparent areas become the ImageNet mean colour: zero after normalisation, so that they add
# no signal of their own (a black or white fill would be a strong, meaningless feature).
FILL_RGB: tuple[int, int, int] = (124, 116, 104)

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the PIL transpose that makes the stored pixels upright.
_ORIENT_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageRejected(Exception):
    """Bad input, with `.reason` in REJECT_REASONS (a metric label) and a human-readable detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; known: {REJECT_REASONS}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# EXIF orientations whose upright x (resp. y) axis runs backwards through the stored pixels.
# A reduced decode has ceil(side / k) pixels per side, so where an axis is reversed the partial
# last DCT block lands at the start and every mapped coordinate shifts by the rounding excess.
_REVERSED_X = (2, 3, 6, 7)
_REVERSED_Y = (3, 4, 7, 8)


class DecodedImage(NamedTuple):
    """An upright RGB image plus the full-resolution size that crop boxes are sampled in.

    `image` may be smaller than (`width`, `height`) by the integer `reduction` (reduced-size JPEG
    decoding); crop boxes sampled at full resolution are mapped into it by `map_box`, which also
    applies the sub-pixel `offset_x`/`offset_y` of a reduced decode seen through an EXIF flip.
    """

    image: Image.Image
    width: int
    height: int
    reduction: int
    offset_x: float = 0.0
    offset_y: float = 0.0

    def map_box(self, top: int, left: int, h: int, w: int) -> tuple[float, float, float, float]:
        """A full-resolution (top, left, h, w) box as PIL's (x0, y0, x1, y1) in `image`."""
        inv = 1.0 / self.reduction
        x0 = left * inv + self.offset_x
        y0 = top * inv + self.offset_y
        return x0, y0, x0 + w * inv, y0 + h * inv


def _open_unchecked(data: bytes) -> ImageFile.ImageFile:
    """Identify `data` from its header, without PIL's bomb check (ours is in `open_image`).

    Distinguishes "no known format claims these bytes" (not_image) from "a format's magic
    matched but its header is broken" (corrupt), which PIL's `Image.open` does not.
    """
    if not data:
        raise ImageRejected("not_image", "zero bytes")
    Image.preinit()
    prefix = data[:16]
    claimed: list[str] = []
    for attempt in range(2):
        if attempt == 1:
            Image.init()  # load the remaining plugins (e.g. WEBP, TIFF) only when needed
        for fmt in ALLOWED_FORMATS:
            if fmt not in Image.OPEN or fmt in claimed:
                continue
            factory, accept = Image.OPEN[fmt]
            if accept is not None and accept(prefix) is not True:
                continue
            claimed.append(fmt)
            try:
                return factory(io.BytesIO(data), "")
            except (SyntaxError, IndexError, TypeError, ValueError, struct.error, EOFError,
                    OSError):
                continue
    if claimed:
        raise ImageRejected("corrupt", f"broken {'/'.join(claimed)} header")
    raise ImageRejected("not_image", f"no supported image format starts with {prefix[:8]!r}")


def open_image(data: bytes, *, max_pixels: int, min_side: int) -> ImageFile.ImageFile:
    """Open lazily and apply the size limits from the header, before any pixel is decoded."""
    im = _open_unchecked(data)
    w, h = im.size
    if w * h > max_pixels:
        raise ImageRejected("too_large", f"{w}x{h} exceeds {max_pixels} pixels")
    if min(w, h) < max(min_side, 2):
        raise ImageRejected("too_small", f"{w}x{h} has a side below {max(min_side, 2)}")
    return im


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8-bit "L".

    16-bit modes are scaled by 1/257 (full range to full range); "I" and "F" are assumed 16-bit
    (PNG) or [0, 1] float when their values fit, otherwise min-max stretched.
    """
    arr = np.asarray(im).astype(np.float32)
    hi = float(arr.max()) if arr.size else 0.0
    lo = float(arr.min()) if arr.size else 0.0
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and 255 < hi <= 65535):
        arr = arr / 257.0
    elif im.mode == "F" and lo >= 0 and hi <= 1.0:
        arr = arr * 255.0
    elif lo < 0 or hi > 255:
        arr = (arr - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited over `FILL_RGB`."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode.startswith("I") or mode == "F":
        im = _high_bit_depth_to_l(im)
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, FILL_RGB)
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag, 1 when absent or unreadable (bad EXIF is not a bad image)."""
    if "exif" not in im.info and im.format not in ("TIFF", "MPO", "JPEG", "WEBP", "PNG"):
        return 1
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in _ORIENT_TRANSPOSE else 1


@contextlib.contextmanager
def _rejecting_decode_errors() -> Iterator[None]:
    """Map whatever PIL raises while decoding untrusted bytes to `ImageRejected`."""
    try:
        yield
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_large", str(exc)) from exc
    except MemoryError as exc:
        raise ImageRejected("too_large", "out of memory while decoding") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageRejected("corrupt", f"{type(exc).__name__}: {exc}") from exc


def draft_scale(width: int, height: int, reduction: int) -> int:
    """The DCT scale PIL's JPEG `draft` picks when asked for 1/`reduction` of the size.

    `draft` rounds the request to a power of two that may be larger than asked (small images);
    callers compare with the reduction they can afford before asking.
    """
    if reduction <= 1:
        return 1
    ratio = min(width // max(1, width // reduction), height // max(1, height // reduction))
    return next(s for s in (8, 4, 2, 1) if ratio >= s)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = 64_000_000,
    min_side: int = 32,
    reduction_for: Callable[[int, int], int] | None = None,
) -> DecodedImage:
    """Decode to an upright RGB image, reduced at decode time where `reduction_for` allows.

    `reduction_for(width, height)` is called exactly once, with the full-resolution size in the
    upright (EXIF-oriented) frame, before any pixel is decoded for JPEG (after, for formats that
    cannot decode reduced); it returns the largest reduction (1, 2, 4 or 8) that loses no output
    resolution. That lets a caller sample its crop boxes first and pick the reduction from them.
    The reduction is used only for JPEG, whose decoder can skip DCT coefficients (faster than
    decoding fully and resizing), and only when `draft` would honour it exactly.
    Truncated data is always rejected: `ImageFile.LOAD_TRUNCATED_IMAGES` is forced off, since a
    silently grey-filled half image would poison the crops.
    """
    im = open_image(data, max_pixels=max_pixels, min_side=min_side)
    stored_w, stored_h = im.size
    draftable = im.format in ("JPEG", "MPO")
    with _rejecting_decode_errors():
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        if not draftable:
            im.load()  # first frame only, for animated GIF/PNG/WebP; PNG's eXIf may follow IDAT
        # JPEG EXIF sits in the header: the orientation is known before decoding.
        orientation = _orientation(im)
    swap = orientation in (5, 6, 7, 8)
    width, height = (stored_h, stored_w) if swap else (stored_w, stored_h)
    # Outside the error mapping: a failing callback is a bug, not a corrupt image.
    want = int(reduction_for(width, height)) if reduction_for is not None else 1
    reduction = 1
    with _rejecting_decode_errors():
        while want > 1 and draft_scale(stored_w, stored_h, want) != want:
            want //= 2  # draft would round up to a coarser scale: settle for a finer one
        if draftable and want > 1:
            drafted = im.draft("RGB", (stored_w // want, stored_h // want))
            if drafted is not None:
                reduction = max(1, round(stored_w / drafted[1][2]))
        im.load()
        rgb = to_rgb(im)
    if orientation != 1:
        rgb = rgb.transpose(_ORIENT_TRANSPOSE[orientation])
    offset_x = offset_y = 0.0
    if reduction > 1:
        # Where an oriented axis runs backwards, the partial last block comes first.
        if orientation in _REVERSED_X:
            offset_x = rgb.size[0] - width / reduction
        if orientation in _REVERSED_Y:
            offset_y = rgb.size[1] - height / reduction
    return DecodedImage(rgb, width, height, reduction, offset_x, offset_y)
