"""load_labelled on local folders and Parquet files: layouts, the seeded split, bad input."""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import services.labelled.load as labelled_load
import services.labelled.store as labelled_store
from services.labelled import LabelledDataError, LabelledSet, load_labelled
from services.labelled.layout import stratified_split, val_count
from services.labelled.load import eval_resize, reduction_for
from tests.data.bad_inputs import CROPS, bad_inputs, exif_rotated_jpeg

SIZE = 16  # image_size used throughout: tiny tensors, fast tests
COLOURS = {"apple": (220, 30, 30), "banana": (30, 200, 40), "cherry": (40, 40, 220)}


def encode(colour: tuple[int, int, int], fmt: str = "JPEG", size: tuple[int, int] = (24, 20),
           mode: str = "RGB", seed: int = 0) -> bytes:
    """A flat colour plus mild noise (so JPEG files differ), encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour, np.int16) + rng.integers(-8, 9, (size[1], size[0], 3)), 0, 255)
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def flat_files(counts: dict[str, int]) -> dict[str, bytes]:
    return {f"{cls}/{i:03d}.jpg": encode(COLOURS[cls], seed=i)
            for cls, n in counts.items() for i in range(n)}


def split_files(train: dict[str, int], val: dict[str, int]) -> dict[str, bytes]:
    out = {f"train/{k}": v for k, v in flat_files(train).items()}
    out.update({f"val/{k}": v for k, v in flat_files(val).items()})
    return out


def dominant(images: torch.Tensor) -> list[int]:
    """Per image, the channel with the largest mean (0 red, 1 green, 2 blue)."""
    return images.float().mean(dim=(2, 3)).argmax(dim=1).tolist()


def check_consistent(ls: LabelledSet) -> None:
    """Shapes, dtypes, and every image showing its class's colour."""
    for part in (ls.train, ls.val):
        n = len(part.names)
        assert part.images.shape == (n, 3, SIZE, SIZE) and part.images.dtype == torch.uint8
        assert part.labels.shape == (n,) and part.labels.dtype == torch.int64
        expected = [int(np.argmax(COLOURS[ls.classes[i]])) for i in part.labels.tolist()]
        assert dominant(part.images) == expected
        for name, label in zip(part.names, part.labels.tolist(), strict=True):
            assert f"/{ls.classes[label]}/" in name


# -- layouts ---------------------------------------------------------------------------------


def test_train_val_layout(tmp_path: Path) -> None:
    write(tmp_path, split_files({"cherry": 3, "apple": 2, "banana": 4}, {"banana": 1, "apple": 2,
                                                                        "cherry": 1}))
    ls = load_labelled(str(tmp_path), image_size=SIZE)
    assert ls.classes == ["apple", "banana", "cherry"] and ls.num_classes == 3
    assert Counter(ls.train.labels.tolist()) == {0: 2, 1: 4, 2: 3}
    assert Counter(ls.val.labels.tolist()) == {0: 2, 1: 1, 2: 1}
    assert all("/train/" in n for n in ls.train.names)
    assert all("/val/" in n for n in ls.val.names)
    assert ls.skipped == {} and ls.source == str(tmp_path)
    check_consistent(ls)


def test_flat_layout_stratified_split(tmp_path: Path) -> None:
    counts = {"apple": 10, "banana": 5, "cherry": 1}
    write(tmp_path, flat_files(counts))
    ls = load_labelled(str(tmp_path), image_size=SIZE, val_fraction=0.3, split_seed=7)
    check_consistent(ls)
    val = Counter(ls.classes[i] for i in ls.val.labels.tolist())
    train = Counter(ls.classes[i] for i in ls.train.labels.tolist())
    for cls, n in counts.items():
        assert val[cls] == val_count(n, 0.3)  # 3, 2 (1.5 rounds up), 0
        assert train[cls] == n - val[cls] >= 1
    assert not set(ls.train.names) & set(ls.val.names)  # disjoint
    everything = {str(tmp_path / rel) for rel in flat_files(counts)}
    assert set(ls.train.names) | set(ls.val.names) == everything  # complete

    again = load_labelled(str(tmp_path), image_size=SIZE, val_fraction=0.3, split_seed=7)
    assert again.val.names == ls.val.names and torch.equal(again.val.images, ls.val.images)
    others = {tuple(load_labelled(str(tmp_path), image_size=SIZE, val_fraction=0.3,
                                  split_seed=s).val.names) for s in (1, 2, 3)}
    assert len(others | {tuple(ls.val.names)}) > 1  # the seed matters


def test_stratified_split_is_per_class_and_stable() -> None:
    by_class = {"a": [f"a{i}" for i in range(20)], "b": [f"b{i}" for i in range(7)]}
    train, val = stratified_split(by_class, 0.25, seed=3)
    everything = {name for names in by_class.values() for name in names}
    assert len(val) == 5 + 2 and not train & val and train | val == everything
    # A class's split depends only on its own images: another class or listing order do not.
    _, val_alone = stratified_split({"b": list(reversed(by_class["b"]))}, 0.25, seed=3)
    assert val_alone == {v for v in val if v.startswith("b")}
    assert [val_count(n, 0.2) for n in (1, 2, 3, 5, 8, 10)] == [0, 0, 1, 1, 2, 2]
    assert val_count(2, 0.9) == 1  # always one left in train


def test_hidden_and_non_image_files_ignored_extensions_any_case(tmp_path: Path) -> None:
    red, green = COLOURS["apple"], COLOURS["banana"]
    write(tmp_path, {
        "apple/a.JPG": encode(red),
        "apple/b.PnG": encode(red, "PNG"),
        # Named by extension only (this Pillow may lack a WebP encoder); decoding sniffs content.
        "apple/deeper/c.webp": encode(red, "PNG"),
        "apple/d.bmp": encode(red, "BMP"),
        "apple/e.gif": encode(red, "GIF"),
        "apple/f.TIFF": encode(red, "TIFF"),
        "apple/g.tif": encode(red, "TIFF", mode="L"),
        "apple/h.jpeg": encode(red, "JPEG", mode="L"),
        "apple/notes.txt": b"not an image",
        "apple/.hidden.jpg": b"garbage",
        "apple/.thumbs/x.jpg": b"garbage",
        "banana/a.png": encode(green, "PNG", mode="RGBA"),
        "banana/b.jpg": encode(green),
        ".cache/x.jpg": b"garbage",
        "__MACOSX/apple/._a.JPG": b"garbage",
        "README.md": b"# a labelled set",
        "loose.jpg": encode(red),  # lies in no class folder
    })
    ls = load_labelled(str(tmp_path), image_size=SIZE, val_fraction=0.2)
    assert ls.classes == ["apple", "banana"]
    assert len(ls.train) + len(ls.val) == 10 and ls.skipped == {}
    names = ls.train.names + ls.val.names
    assert str(tmp_path / "apple/deeper/c.webp") in names
    # Grey images carry no dominant channel: check only the coloured ones.
    for part in (ls.train, ls.val):
        for name, img in zip(part.names, part.images, strict=True):
            if not name.endswith(("g.tif", "h.jpeg")):
                assert dominant(img[None]) == [0 if "/apple/" in name else 1]


def test_lone_class_named_train_is_a_flat_layout(tmp_path: Path) -> None:
    write(tmp_path, {"train/a.jpg": encode(COLOURS["apple"]), "train/b.jpg": encode((9, 9, 9)),
                     "other/c.jpg": encode((1, 2, 3)), "other/d.jpg": encode((1, 2, 3))})
    ls = load_labelled(str(tmp_path), image_size=SIZE, val_fraction=0.5)
    assert ls.classes == ["other", "train"]


# -- structural errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "dirs", "match"),
    [
        ({}, [], "no class folders"),
        ({"loose.jpg": b"x"}, [], "no class folders"),
        ({"apple/a.jpg": b"x"}, ["banana"], r"empty class folder .*banana/"),
        ({"apple/a.jpg": b"x", "banana/notes.txt": b"x"}, [], r"empty class folder .*banana/"),
        ({"train/apple/a.jpg": b"x", "val/apple/b.jpg": b"x", "val/banana/c.jpg": b"x",
          "train/cherry/d.jpg": b"x"}, [], "only in train: cherry; only in val: banana"),
        ({"train/apple/a.jpg": b"x", "val/apple/b.jpg": b"x"}, ["val/banana"],
         r"empty class folder .*val/banana/"),
        ({"train/apple/a.jpg": b"x"}, ["val"], r"no class folders in .*val"),
        ({"train/apple/a.jpg": b"x", "train/banana/b.jpg": b"x"}, [],
         r"train/ holds class folders but .*val/ does not exist"),
    ],
)
def test_structural_errors(tmp_path: Path, files: dict[str, bytes], dirs: list[str],
                           match: str) -> None:
    root = write(tmp_path / "set", files)
    root.mkdir(exist_ok=True)
    for d in dirs:
        (root / d).mkdir(parents=True)
    with pytest.raises(LabelledDataError, match=match) as info:
        load_labelled(str(root), image_size=SIZE)
    assert str(root) in str(info.value)


def test_not_found_and_wrong_kind_of_file(tmp_path: Path) -> None:
    for spec in (tmp_path / "nope", tmp_path / "nope.parquet"):
        with pytest.raises(LabelledDataError, match=f"not found: {spec}"):
            load_labelled(str(spec))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(LabelledDataError, match=r"not a \.parquet file"):
        load_labelled(str(tmp_path / "x.csv"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(LabelledDataError, match=r"cannot read Parquet file .*bad\.parquet"):
        load_labelled(str(tmp_path / "bad.parquet"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"val_fraction": 0.0}, "val_fraction"), ({"val_fraction": 1}, "val_fraction"),
     ({"image_size": 0}, "image_size"), ({"split_seed": "0"}, "split_seed")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(LabelledDataError, match=match):
        load_labelled(str(tmp_path), **kwargs)


def test_no_validation_image_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, flat_files({"apple": 1, "banana": 2}))
    with pytest.raises(LabelledDataError, match="no validation images"):
        load_labelled(str(tmp_path), image_size=SIZE, val_fraction=0.2)


# -- unreadable images -----------------------------------------------------------------------


def test_unreadable_images_are_skipped_counted_and_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(labelled_store, "MAX_OBJECT_BYTES", 100_000)
    cases = bad_inputs(max_object_bytes=100_000)
    files = {f"apple/{name}": data for name, (data, _) in cases.items()}
    files.update(flat_files({"apple": 2, "banana": 3}))
    write(tmp_path, files)
    with caplog.at_level(logging.INFO, logger="seer.labelled"):
        ls = load_labelled(str(tmp_path), image_size=SIZE, val_fraction=0.3)
    expected = Counter(outcome for _, outcome in cases.values() if outcome != CROPS)
    assert ls.skipped == dict(expected)  # corrupt, not_image, too_small, too_large (bomb, bytes)
    good = sum(outcome == CROPS for _, outcome in cases.values()) + 5
    assert len(ls.train) + len(ls.val) == good
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"skipped {sum(expected.values())} unreadable image(s)" in message
    assert "corrupt: 1" in message and "not_image: 3" in message


def test_class_with_no_usable_training_image_is_an_error(tmp_path: Path) -> None:
    files = flat_files({"apple": 3})
    files.update({"banana/a.jpg": b"<html>", "banana/b.jpg": b"\xff\xd8\xff\xe0broken"})
    write(tmp_path, files)
    with pytest.raises(LabelledDataError, match="banana have training images but none could"):
        load_labelled(str(tmp_path), image_size=SIZE)
    files = split_files({"apple": 2, "banana": 1}, {"apple": 1, "banana": 1})
    files["train/banana/000.jpg"] = b"GIF89a garbage"
    write(tmp_path / "split", files)
    with pytest.raises(LabelledDataError, match="banana"):
        load_labelled(str(tmp_path / "split"), image_size=SIZE)


def test_decompression_bomb_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, flat_files({"apple": 3}))
    write(tmp_path, {"apple/big.png": encode(COLOURS["apple"], "PNG", size=(40, 30))})
    monkeypatch.setattr(labelled_load, "MAX_PIXELS", 1000)  # 40x30 = 1200 pixels
    ls = load_labelled(str(tmp_path), image_size=SIZE, val_fraction=0.3)
    assert ls.skipped == {"too_large": 1} and len(ls.train) + len(ls.val) == 3


# -- decoding --------------------------------------------------------------------------------


def test_progress_reports_every_image(tmp_path: Path) -> None:
    write(tmp_path, flat_files({"apple": 4, "banana": 3}))
    (tmp_path / "banana/bad.jpg").write_bytes(b"nope")
    calls: list[tuple[int, int]] = []
    load_labelled(str(tmp_path), image_size=SIZE, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 8) for i in range(9)]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    # Stored 96x64 (landscape) with orientation 6: upright it is portrait. Upright, its stored
    # top row runs down the right-hand side: compare with an explicit transpose.
    write(tmp_path, {"a/x.jpg": exif_rotated_jpeg(), "a/y.jpg": exif_rotated_jpeg()})
    ls = load_labelled(str(tmp_path), image_size=SIZE, val_fraction=0.5)
    stored = Image.open(io.BytesIO(exif_rotated_jpeg())).convert("RGB")
    from seer_core.evaluation import preprocess

    upright = preprocess(stored.transpose(Image.Transpose.ROTATE_270), SIZE)
    sideways = preprocess(stored, SIZE)
    got = ls.train.images[0].float()
    assert (got - upright.float()).abs().mean() < 6 < (got - sideways.float()).abs().mean()


def test_large_jpeg_decoded_reduced_matches_full_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert eval_resize(224) == 256 and eval_resize(SIZE) == 18
    assert reduction_for(4000, 3000, 256) == 8 and reduction_for(1000, 600, 256) == 2
    assert reduction_for(500, 300, 256) == 1 and reduction_for(2048, 2048, 256) == 8
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    arr = np.stack([x * 255 / 640, y * 255 / 480, 128 + 0 * x], -1)
    arr = arr + rng.normal(0, 3, (480, 640, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    write(tmp_path, {"a/big.jpg": data, "a/big2.jpg": data})
    seen: list[int] = []
    real = labelled_load.reduction_for

    def spy(w: int, h: int, resize: int) -> int:
        seen.append(real(w, h, resize))
        return seen[-1]

    monkeypatch.setattr(labelled_load, "reduction_for", spy)
    ls = load_labelled(str(tmp_path), image_size=SIZE, val_fraction=0.5)
    assert seen == [8, 8]  # 480 // 8 = 60 >= 18
    from seer_core.evaluation import preprocess

    full = preprocess(Image.open(io.BytesIO(data)).convert("RGB"), SIZE).float()
    assert (ls.train.images[0].float() - full).abs().mean() < 4


# -- Parquet ---------------------------------------------------------------------------------


def write_parquet(path: Path, columns: dict[str, list], schema: pa.Schema | None = None) -> Path:
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def parquet_rows(counts: dict[str, int]) -> tuple[list[bytes], list[str]]:
    images, labels = [], []
    for cls, n in counts.items():
        for i in range(n):
            images.append(encode(COLOURS[cls], seed=i))
            labels.append(cls)
    return images, labels


def test_parquet_with_split_column(tmp_path: Path) -> None:
    images, labels = parquet_rows({"banana": 3, "apple": 4})
    splits = ["train", "val", "train", "train", "val", "train", "train"]
    path = write_parquet(tmp_path / "set.parquet",
                         {"label": labels, "image": images, "split": splits, "extra": labels})
    ls = load_labelled(str(path), image_size=SIZE)
    assert ls.classes == ["apple", "banana"]
    assert ls.train.names == [f"{path}#{i}" for i in (0, 2, 3, 5, 6)]
    assert ls.val.names == [f"{path}#{i}" for i in (1, 4)]
    assert ls.train.labels.tolist() == [1, 1, 0, 0, 0] and ls.val.labels.tolist() == [1, 0]
    for part in (ls.train, ls.val):
        assert part.images.shape == (len(part), 3, SIZE, SIZE) and part.images.dtype == torch.uint8
        assert dominant(part.images) == [0 if lab == 0 else 1 for lab in part.labels.tolist()]


def test_parquet_int_labels_without_split_column(tmp_path: Path) -> None:
    images, names = parquet_rows({"apple": 5, "banana": 5, "cherry": 3})
    ids = {"apple": 10, "banana": 2, "cherry": 0}
    schema = pa.schema([("image", pa.large_binary()), ("label", pa.int16())])
    path = write_parquet(tmp_path / "ints.parquet",
                         {"image": images, "label": [ids[n] for n in names]}, schema)
    ls = load_labelled(str(path), image_size=SIZE, val_fraction=0.4, split_seed=1)
    assert ls.classes == ["0", "2", "10"]  # sorted by value, not as strings
    by_row = {int(n.rsplit("#", 1)[1]): lab for n, lab in
              zip(ls.train.names + ls.val.names, (ls.train.labels.tolist()
                                                  + ls.val.labels.tolist()), strict=True)}
    assert sorted(by_row) == list(range(13))
    assert all(ls.classes[by_row[r]] == str(ids[names[r]]) for r in by_row)
    assert Counter(ls.val.labels.tolist()) == {0: 1, 1: 2, 2: 2}  # round(0.4 * n) per class
    again = load_labelled(str(path), image_size=SIZE, val_fraction=0.4, split_seed=1)
    assert again.val.names == ls.val.names


def test_parquet_dictionary_labels_and_null_image(tmp_path: Path, caplog) -> None:
    images, labels = parquet_rows({"apple": 3, "banana": 3})
    images[1] = None  # type: ignore[call-overload]
    table = pa.table({"image": images, "label": pa.array(labels).dictionary_encode()})
    pq.write_table(table, tmp_path / "d.parquet")
    ls = load_labelled(str(tmp_path / "d.parquet"), image_size=SIZE, val_fraction=0.3)
    assert ls.classes == ["apple", "banana"] and ls.skipped == {"not_image": 1}
    assert len(ls.train) + len(ls.val) == 5


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        ({"img": [b"x"], "label": ["a"]}, r"lacks column\(s\) image: it has img, label"),
        ({"image": [b"x"], "class": ["a"], "split": ["train"]},
         "lacks column.* label: it has image, class, split"),
        ({"image": ["text"], "label": ["a"]}, "column image must hold bytes"),
        ({"image": [b"x"], "label": [1.5]}, "column label must be string or integer, not double"),
        ({"image": [b"x", b"y"], "label": ["a", None]}, "row 1 has no label"),
        ({"image": [b"x", b"y", b"z"], "label": ["a", "a", "a"],
          "split": ["train", "test", "val"]}, r"split holds 'test' \(first at row 1\)"),
        ({"image": [b"x", b"y", b"z"], "label": ["a", "b", "a"],
          "split": ["train", "train", "val"]}, "labels differ .*only in train: b"),
        ({"image": [], "label": []}, "no images in"),
    ],
)
def test_parquet_errors(tmp_path: Path, columns: dict, match: str) -> None:
    schema = None
    if not columns.get("image", [1]) and "label" in columns:
        schema = pa.schema([("image", pa.binary()), ("label", pa.string())])
    path = write_parquet(tmp_path / "bad.parquet", columns, schema)
    with pytest.raises(LabelledDataError, match=match) as info:
        load_labelled(str(path), image_size=SIZE)
    assert str(path) in str(info.value)


def test_same_images_same_tensors_across_sources(tmp_path: Path) -> None:
    files = split_files({"apple": 2, "banana": 2}, {"apple": 1, "banana": 1})
    folder = load_labelled(str(write(tmp_path / "f", files)), image_size=SIZE)
    rows = sorted(files.items())
    path = write_parquet(tmp_path / "p.parquet", {
        "image": [d for _, d in rows],
        "label": [k.split("/")[1] for k, _ in rows],
        "split": [k.split("/")[0] for k, _ in rows],
    })
    table = load_labelled(str(path), image_size=SIZE)
    assert table.classes == folder.classes
    for a, b in ((folder.train, table.train), (folder.val, table.val)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_endpoint_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(LabelledDataError, match="must not carry credentials") as info:
        load_labelled("s3://bucket/set", endpoint_url="http://alice:s3cr3t@127.0.0.1:9")
    assert "s3cr3t" not in str(info.value) and "alice" not in str(info.value)
