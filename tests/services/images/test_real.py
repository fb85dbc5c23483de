"""The real-image sets: disjoint pool and labelled set, train/val split by stamp, the refusal.

A small stamp tree drawn here stands in for /usr/share/tuxpaint/stamps where only the logic is
under test (so these run without the packages); the last test uses the installed packages and
is skipped, saying so, when they are absent (.ci/run installs them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.images import real as real_images
from services.images.real import (
    MANIFEST,
    MissingPackagesError,
    check_sources,
    write_real_sets,
)
from services.labelled import load_labelled

CLASSES = {"bird": ("animals/birds",), "fruit": ("food/fruit",)}


def _stamp(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, size=(40, 30, 4), dtype=np.uint8)
    rgba[:5, :, 3] = 0  # a transparent margin, as stamps have
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """Two classes of 4 stamp groups each (one group with a variant), a pool folder holding 3
    stamps of which one is a byte copy of a bird (the same drawing filed twice), a backdrop."""
    stamps, backdrops = tmp_path / "stamps", tmp_path / "backgrounds"
    for c, folder in enumerate(("animals/birds", "food/fruit")):
        for i, name in enumerate(("owl", "duck", "crow", "swan", "owl_snowy2")):
            _stamp(stamps / folder / f"{name}.png", 100 * c + i)
    for i, name in enumerate(("tree", "car")):
        _stamp(stamps / "other" / f"{name}.png", 900 + i)
    shutil.copy(stamps / "animals/birds/duck.png", stamps / "other" / "duck_copy.png")
    backdrops.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(backdrops / "photo.jpg")
    return stamps, backdrops


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def test_labelled_stamps_never_reach_the_pool_and_val_never_train(
        tree: tuple[Path, Path], tmp_path: Path) -> None:
    stamps, backdrops = tree
    sets = write_real_sets(tmp_path / "pool", tmp_path / "labelled", pool_count=12,
                           train_views=2, val_views=1, classes=CLASSES, seed=3,
                           stamps_root=stamps, backdrops_root=backdrops)
    labelled, pool = _manifest(tmp_path / "labelled"), _manifest(tmp_path / "pool")
    assert set(labelled["stamps"].values()).isdisjoint(pool["stamps"].values())
    assert "other/duck_copy.png" not in pool["stamps"]  # a byte copy of a labelled bird
    assert set(pool["stamps"]) == {"other/tree.png", "other/car.png"}
    train, val = labelled["splits"]["train"], labelled["splits"]["val"]
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(labelled["stamps"])
    # A stamp and its variant (owl, owl_snowy2) are one group: on one side of the split.
    for folder in ("animals/birds", "food/fruit"):
        assert (f"{folder}/owl.png" in val) == (f"{folder}/owl_snowy2.png" in val)
    assert sets.pool == 12 and len(list((tmp_path / "pool").glob("real_*.jpg"))) == 12
    data = load_labelled(str(tmp_path / "labelled"), image_size=32)  # what `seer eval` reads
    assert data.classes == ["bird", "fruit"]
    assert len(data.train.labels) == sum(sets.train.values()) == 2 * len(train)
    assert len(data.val.labels) == sum(sets.val.values()) == len(val)


def test_missing_packages_refuse_with_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(MissingPackagesError) as info:
        check_sources(tmp_path / "no-stamps", tmp_path / "no-backgrounds")
    message = str(info.value)
    assert "apt-get install -y tuxpaint-stamps-default mate-backgrounds" in message
    assert "no-stamps/animals/birds" in message and "--data generated" in message


def test_the_installed_packages_give_eight_classes() -> None:
    try:
        check_sources(real_images.STAMPS_ROOT, real_images.BACKDROPS_ROOT)
    except MissingPackagesError as exc:
        pytest.skip(f"packages not installed ({real_images.INSTALL_COMMAND}): {exc}")
    for name, folders in real_images.CLASSES.items():
        groups = {real_images._group(p.relative_to(real_images.STAMPS_ROOT))
                  for f in folders for p in (real_images.STAMPS_ROOT / f).rglob("*.png")}
        assert len(groups) >= 5, (name, len(groups))  # enough for a train/val split


def _corner_spread(path: Path) -> float:
    """Std of the 8x8 left corners (the least spread of the two): ~0 on a plain background,
    large on the noise backdrop. A labelled image's one drawing starts at least 8% of the side
    from the left edge, so it never covers them."""
    with Image.open(path) as img:
        grey = np.asarray(img.convert("L"))
    return float(min(grey[:8, :8].std(), grey[-8:, :8].std()))


@pytest.mark.parametrize("photo_share, plain", [(0.0, 1.0), (1.0, 0.0), (0.25, None)])
def test_photo_share_sets_the_drawings_on_photos_or_plain_backgrounds(
    tree: tuple[Path, Path], tmp_path: Path, photo_share: float, plain: float | None
) -> None:
    """Issue 18: most drawings on a plain light background, `photo_share` of them on a crop of a
    packaged photo (here random noise, so the two are told apart by the corner's spread)."""
    stamps, backdrops = tree
    write_real_sets(tmp_path / "pool", tmp_path / "labelled", pool_count=40, seed=1,
                    classes=CLASSES, stamps_root=stamps, backdrops_root=backdrops,
                    photo_share=photo_share)
    files = sorted((tmp_path / "labelled").rglob("*.jpg"))
    plain_share = sum(_corner_spread(f) < 8 for f in files) / len(files)
    if plain is not None:
        assert plain_share == plain
    else:
        assert 0.55 < plain_share < 0.95  # ~3 in 4 (binomial spread over 40 images)
    with pytest.raises(ValueError, match="photo_share"):
        write_real_sets(tmp_path / "p2", tmp_path / "l2", classes=CLASSES, stamps_root=stamps,
                        backdrops_root=backdrops, photo_share=1.5)
