"""Decode: every kind of bad input maps to its rejection reason; odd modes still give crops."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from seer_core.augment import ImageRejected, build_multicrop, decode_image
from seer_core.augment.decode import FILL_RGB, open_image, to_rgb


def probe_image(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) as stored, from the header alone: what the decoder sees before
    any pixel is decoded (no size limit applies)."""
    im = open_image(data, max_pixels=2**62, min_side=0)
    return str(im.format), *im.size


def _encode(img: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _photo(w: int = 160, h: int = 120, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG declaring width x height, with a tiny (wrong) IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _reason(data: bytes, **kwargs: object) -> str:
    with pytest.raises(ImageRejected) as info:
        build_multicrop("seer", seed=0, **kwargs)(data)  # type: ignore[arg-type]
    return info.value.reason


def _assert_seer_crops(crops: list[torch.Tensor]) -> None:
    assert [tuple(c.shape) for c in crops] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 4
    assert all(c.dtype == torch.uint8 and c.is_contiguous() for c in crops)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is plain text and certainly not an image\n" * 20,
        b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>gone</body></html>",
        b"\x00" * 1000,
    ],
    ids=["zero-bytes", "text", "html-as-jpg", "zeros"],
)
def test_not_image(data: bytes) -> None:
    assert _reason(data) == "not_image"
    with pytest.raises(ImageRejected):
        probe_image(data)


def test_truncated_jpeg_is_corrupt() -> None:
    data = _encode(_photo(), quality=90)
    assert _reason(data[: len(data) // 2]) == "corrupt"
    assert _reason(data[:40]) == "corrupt"  # magic matches, header broken


def test_corrupt_png_body() -> None:
    data = bytearray(_encode(_photo(), "PNG"))
    data[60:200] = b"\xff" * 140  # inside IDAT: zlib stream broken, CRC wrong
    assert _reason(bytes(data)) == "corrupt"


def test_too_small() -> None:
    assert _reason(_encode(Image.new("RGB", (1, 1)), "PNG")) == "too_small"
    assert _reason(_encode(_photo(200, 20))) == "too_small"  # one side below min_side=32
    crops = build_multicrop(seed=0, min_side=16)(_encode(_photo(200, 20)))
    _assert_seer_crops(crops)


def test_bomb_header_rejected_instantly() -> None:
    data = _png_header_only(100_000, 100_000)
    assert probe_image(data) == ("PNG", 100_000, 100_000)
    start = time.perf_counter()
    assert _reason(data) == "too_large"
    assert time.perf_counter() - start < 0.5
    assert _reason(_encode(_photo(300, 300)), max_pixels=300 * 299) == "too_large"


def test_pil_bomb_limits_never_escape() -> None:
    # Above PIL's own warning (89M) and error (179M) limits, but allowed by ours: PIL must not
    # warn or raise; the (fake) pixel data is then simply corrupt.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for side in (10_000, 20_000):
            assert _reason(_png_header_only(side, side), max_pixels=10**9) == "corrupt"


def test_cmyk_jpeg() -> None:
    cmyk = _photo().convert("CMYK")
    data = _encode(cmyk)
    assert probe_image(data) == ("JPEG", 160, 120)
    _assert_seer_crops(build_multicrop(seed=0)(data))
    rgb = decode_image(data).image
    ref = np.asarray(cmyk.convert("RGB"), dtype=np.float64)
    assert np.abs(np.asarray(rgb, dtype=np.float64) - ref).mean() < 12  # JPEG loss only


def test_16bit_png() -> None:
    ramp = np.tile(np.linspace(0, 65535, 128).astype(np.uint16), (96, 1))
    data = _encode(Image.fromarray(ramp), "PNG")
    _assert_seer_crops(build_multicrop(seed=0)(data))
    out = np.asarray(decode_image(data).image)
    assert out.shape == (96, 128, 3)
    np.testing.assert_allclose(out[0, :, 0], ramp[0] / 257.0, atol=1.0)


def test_palette_png_with_transparency() -> None:
    img = Image.new("P", (64, 64), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (32, 0, 64, 64))
    data = _encode(img, "PNG", transparency=0)
    _assert_seer_crops(build_multicrop(seed=0)(data))
    out = np.asarray(decode_image(data).image)
    assert tuple(out[10, 5]) == FILL_RGB  # transparent red -> fill colour
    assert tuple(out[10, 50]) == (0, 0, 255)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    crops = build_multicrop(seed=0, photometric=False)(buf.getvalue())
    _assert_seer_crops(crops)
    for crop in crops:
        assert crop[0].float().mean() > 250 and crop[2].float().mean() < 5


def test_exif_orientation_is_applied() -> None:
    upright = Image.new("RGB", (120, 200), (255, 0, 0))
    upright.paste((0, 0, 255), (0, 100, 120, 200))  # top red, bottom blue
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a rotated camera stores
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(stored, quality=95, exif=exif)
    assert probe_image(data)[1:] == (200, 120)  # header: as stored
    decoded = decode_image(data)
    assert decoded.image.size == (120, 200) and (decoded.width, decoded.height) == (120, 200)
    out = np.asarray(decoded.image).astype(int)
    assert out[20, 60, 0] > 200 and out[20, 60, 2] < 50  # top is red
    assert out[180, 60, 2] > 200 and out[180, 60, 0] < 50  # bottom is blue
    _assert_seer_crops(build_multicrop(seed=0)(data))


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "1", "I", "I;16", "F", "P", "PA", "CMYK"])
def test_every_mode_to_rgb(mode: str) -> None:
    base = _photo(48, 40)
    if mode in ("I", "F"):
        arr = np.asarray(base.convert("L"), dtype=np.float32) * (257.0 if mode == "I" else 1 / 255)
        img = Image.fromarray(arr.astype(np.int32 if mode == "I" else np.float32), mode)
    elif mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    elif mode == "PA":
        img = base.convert("P").convert("PA")
    else:
        img = base.convert(mode)
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (48, 40)
    if mode in ("I", "I;16", "F", "L", "LA"):
        grey = np.asarray(base.convert("L"), dtype=np.float64)
        assert np.abs(np.asarray(rgb)[..., 1] - grey).max() <= 1.0
