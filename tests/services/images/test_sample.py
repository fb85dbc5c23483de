"""Sample images: varied, decodable, deterministic, quick."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from seer_core.augment import build_multicrop, decode_image
from services.images.sample import generate_photo_like_jpegs, generate_sample_images


def test_generate_sample_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = generate_sample_images(tmp_path / "a", 200, seed=1, min_side=40, max_side=120,
                               progress=True)
    files = sorted((tmp_path / "a").iterdir())
    assert n == 200 and len(files) == 200
    assert "200/200" in capsys.readouterr().err
    formats, sizes, rotated = set(), set(), 0
    for f in files:
        with Image.open(f) as im:
            formats.add(im.format)
            sizes.add(im.size)
            assert min(im.size) >= 40 and max(im.size) <= 120
            rotated += im.getexif().get(0x0112, 1) != 1
    assert formats == {"JPEG", "PNG"}
    assert len(sizes) > 50  # varied sizes and aspect ratios
    assert rotated >= 2  # a few carry an EXIF orientation
    multicrop = build_multicrop("seer", seed=0, min_side=16)
    for f in files[:20]:
        assert len(multicrop(f.read_bytes())) == 6


def test_sample_images_deterministic_and_quiet(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    generate_sample_images(tmp_path / "a", 5, seed=3, min_side=32, max_side=64, progress=False)
    generate_sample_images(tmp_path / "b", 5, seed=3, min_side=32, max_side=64, progress=False)
    generate_sample_images(tmp_path / "c", 5, seed=4, min_side=32, max_side=64, progress=False)
    assert capsys.readouterr().err == ""
    a = [p.read_bytes() for p in sorted((tmp_path / "a").iterdir())]
    b = [p.read_bytes() for p in sorted((tmp_path / "b").iterdir())]
    c = [p.read_bytes() for p in sorted((tmp_path / "c").iterdir())]
    assert a == b and a != c
    with pytest.raises(ValueError):
        generate_sample_images(tmp_path / "d", 1, min_side=100, max_side=50)


def test_photo_like_jpegs(tmp_path: Path) -> None:
    paths = generate_photo_like_jpegs(tmp_path, 6, side=216, seed=0)
    assert len(paths) == 6
    for p in paths:
        data = p.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and im.width == 216
            assert im.height in (216, 270, 113)  # IG aspect ratios 1:1, 4:5, 1.91:1
        rgb = decode_image(data).image
        # photo-like: not flat, plenty of distinct colours
        assert len(set(rgb.resize((32, 32)).tobytes()[i:i + 3] for i in range(0, 3072, 3))) > 200


def _pixels(folder: Path) -> list[bytes]:
    out = []
    for path in sorted(folder.iterdir()):
        with Image.open(path) as im:
            out.append(ImageOps.exif_transpose(im).convert("RGB").tobytes())
    return out


def test_objects_option(tmp_path: Path) -> None:
    """objects=False is the plain photo-like pool (still there for benchmarks and the old
    behaviour); objects=True, the default, draws vocabulary objects into the same seed's images."""
    kwargs = {"seed": 5, "min_side": 48, "max_side": 96, "progress": False}
    assert generate_sample_images(tmp_path / "plain", 6, objects=False, **kwargs) == 6
    generate_sample_images(tmp_path / "plain2", 6, objects=False, **kwargs)
    generate_sample_images(tmp_path / "objects", 6, objects=True, **kwargs)
    generate_sample_images(tmp_path / "default", 6, **kwargs)
    plain, objects = _pixels(tmp_path / "plain"), _pixels(tmp_path / "objects")
    assert plain == _pixels(tmp_path / "plain2")
    assert objects == _pixels(tmp_path / "default")
    assert len(plain) == len(objects) == 6
    assert all(p != o for p, o in zip(plain, objects))
