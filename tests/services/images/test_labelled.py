"""`seer seed --labelled`'s generator: the layout the evaluator reads, counts, sizes, seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from services.images.labelled import generate_labelled_images
from services.images.shapes import OBJECT_KINDS
from services.labelled import load_labelled

TRAIN, VAL = 3, 2
SIDES = {"min_side": 48, "max_side": 64}


def _generate(out: Path, seed: int = 0, train: int = TRAIN, val: int = VAL) -> dict[str, int]:
    return generate_labelled_images(out, train_per_class=train, val_per_class=val, seed=seed,
                                    progress=False, **SIDES)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("labelled")
    assert _generate(out) == {"train": TRAIN * len(OBJECT_KINDS), "val": VAL * len(OBJECT_KINDS)}
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_layout_one_folder_per_kind_in_both_splits(labelled: Path) -> None:
    assert sorted(p.name for p in labelled.iterdir()) == ["train", "val"]
    for split, per_class in (("train", TRAIN), ("val", VAL)):
        folders = sorted(p for p in (labelled / split).iterdir())
        assert [p.name for p in folders] == sorted(OBJECT_KINDS)
        for folder in folders:
            names = sorted(p.name for p in folder.iterdir())
            assert names == [f"{folder.name}_{i:05d}.jpg" for i in range(per_class)]


def test_images_decode_as_square_rgb_jpegs_within_the_sides(labelled: Path) -> None:
    sides = set()
    for path in labelled.rglob("*.jpg"):
        with Image.open(path) as img:
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB"
            assert img.width == img.height and 48 <= img.width <= 64, (path, img.size)
            sides.add(img.width)
            # Not a flat image: a backdrop, an object and grain.
            extrema = img.convert("L").getextrema()
            assert extrema[1] - extrema[0] > 40, path
    assert len(sides) > 5  # sizes vary


def test_deterministic_by_seed(labelled: Path, tmp_path: Path) -> None:
    _generate(tmp_path / "same", seed=0)
    _generate(tmp_path / "other", seed=1)
    reference = _files(labelled)
    assert _files(tmp_path / "same") == reference
    other = _files(tmp_path / "other")
    assert other.keys() == reference.keys()
    assert all(other[name] != data for name, data in reference.items())


def test_each_image_has_its_own_generator(labelled: Path, tmp_path: Path) -> None:
    """Fewer images per class: the same first images, and the val split does not move."""
    _generate(tmp_path / "fewer", train=1, val=VAL)
    fewer = _files(tmp_path / "fewer")
    reference = _files(labelled)
    assert len(fewer) == len(OBJECT_KINDS) * (1 + VAL)
    assert all(reference[name] == data for name, data in fewer.items())


def test_load_labelled_reads_it_with_the_kinds_as_classes(labelled: Path) -> None:
    data = load_labelled(str(labelled), image_size=32)
    assert data.classes == sorted(OBJECT_KINDS)
    assert len(data.train) == TRAIN * len(OBJECT_KINDS)
    assert len(data.val) == VAL * len(OBJECT_KINDS)
    assert data.train.images.shape == (TRAIN * len(OBJECT_KINDS), 3, 32, 32)
    assert data.train.images.dtype == torch.uint8
    assert data.train.labels.bincount().tolist() == [TRAIN] * len(OBJECT_KINDS)
    assert data.val.labels.bincount().tolist() == [VAL] * len(OBJECT_KINDS)
    assert not any(data.skipped.values())
    # Labels follow the folders: every image's label names the folder it came from.
    for name, label in zip(data.val.names, data.val.labels.tolist()):
        assert Path(name).parent.name == data.classes[label]


@pytest.mark.parametrize(
    "kwargs",
    [{"train_per_class": 0}, {"val_per_class": 0}, {"train_per_class": -1},
     {"min_side": 8, "max_side": 64}, {"min_side": 64, "max_side": 48}],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, kwargs: dict[str, int]) -> None:
    args = {"train_per_class": 1, "val_per_class": 1, "progress": False, **SIDES, **kwargs}
    with pytest.raises(ValueError):
        generate_labelled_images(tmp_path / "out", **args)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()  # validated before anything is written
