"""Bad (and awkward but valid) inputs a random image stream really contains, made in code.

Generated rather than committed so the repository holds no binaries and every case says, in
code, exactly what is wrong with it. ``bad_inputs()`` maps an object name to its bytes and the
outcome the ingest stage must reach: ``"crops"`` or the failure reason it is counted under.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

CROPS = "crops"


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth, photo-like RGB image (gradients + mild noise) of the given size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / (7 + seed % 5))
    g = 128 + 100 * np.cos(y / 9.0)
    b = 255 * (x + y) / (width + height)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _jpeg(img: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def _png(img: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def good_jpeg(width: int = 96, height: int = 80, seed: int = 0) -> bytes:
    """A plain valid JPEG."""
    return _jpeg(_photo(width, height, seed))


def truncated_jpeg() -> bytes:
    """A JPEG cut in the middle of its entropy-coded data (an interrupted upload)."""
    data = good_jpeg(128, 96, seed=1)
    return data[: len(data) // 2]


def cmyk_jpeg() -> bytes:
    """A print-workflow CMYK JPEG (valid; must be converted to RGB)."""
    return _jpeg(_photo(90, 70, seed=2).convert("CMYK"))


def png_16bit() -> bytes:
    """A 16-bit greyscale PNG (mode I;16: scientific and scanner output)."""
    ramp = (np.arange(80 * 64, dtype=np.uint32).reshape(64, 80) * 13 % 65536).astype(np.uint16)
    img = Image.fromarray(ramp)  # uint16 arrays become mode I;16
    assert img.mode == "I;16", img.mode
    return _png(img)


def palette_png_transparent() -> bytes:
    """A palette PNG with a transparent colour (mode P + tRNS)."""
    img = _photo(72, 64, seed=3).quantize(colors=32)
    return _png(img, transparency=0)


def one_pixel_png() -> bytes:
    """A 1x1 image (tracking pixels are common in scraped data)."""
    return _png(Image.new("RGB", (1, 1), (200, 10, 10)))


def animated_gif() -> bytes:
    """A 3-frame animated GIF (the first frame is used)."""
    frames = [_photo(64, 48, seed=s).convert("P") for s in (4, 5, 6)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return buf.getvalue()


def png_bomb_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb).

    Only the signature, a valid IHDR, one small IDAT and IEND: decoding it would allocate
    30 GB, so the ingest stage must refuse it from the header alone.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """A JPEG stored landscape with EXIF orientation 6 (display rotated 90°: a phone photo)."""
    img = _photo(96, 64, seed=7)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(img, exif=exif.tobytes())


def html_error_page() -> bytes:
    """What a CDN returns instead of an image, saved under a .jpg name."""
    return (
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
        b"<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n"
    )


def text_file() -> bytes:
    return b"just some notes, not an image at all\n" * 4


def oversized_jpeg(min_bytes: int) -> bytes:
    """A valid JPEG of more than ``min_bytes`` bytes (noise compresses badly)."""
    side = 128
    rng = np.random.default_rng(8)
    while True:
        noise = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        data = _jpeg(Image.fromarray(noise, "RGB"))
        if len(data) > min_bytes:
            return data
        side *= 2


def bad_inputs(max_object_bytes: int = 100_000) -> dict[str, tuple[bytes, str]]:
    """Object name → (bytes, expected outcome: ``"crops"`` or a failure reason).

    ``max_object_bytes`` is the byte limit the test configures; one object exceeds it and every
    other object stays well below it.
    """
    cases: dict[str, tuple[bytes, str]] = {
        "zero_bytes.jpg": (b"", "not_image"),
        "truncated.jpg": (truncated_jpeg(), "corrupt"),
        "text.jpg": (text_file(), "not_image"),
        "error_page.jpg": (html_error_page(), "not_image"),
        "cmyk.jpg": (cmyk_jpeg(), CROPS),
        "sixteen_bit.png": (png_16bit(), CROPS),
        "palette_alpha.png": (palette_png_transparent(), CROPS),
        "one_pixel.png": (one_pixel_png(), "too_small"),
        "animated.gif": (animated_gif(), CROPS),
        "bomb.png": (png_bomb_header(), "too_large"),
        "exif_rotated.jpg": (exif_rotated_jpeg(), CROPS),
        "oversized.jpg": (oversized_jpeg(max_object_bytes), "too_large"),
    }
    for name, (data, outcome) in cases.items():
        if name != "oversized.jpg" and len(data) >= max_object_bytes:
            raise ValueError(f"{name} is {len(data)} bytes, not below the limit {max_object_bytes}")
        assert outcome == CROPS or outcome in (
            "not_image", "corrupt", "too_small", "too_large"
        ), outcome
    return cases
