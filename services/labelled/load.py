"""``load_labelled``: a spec (folder, S3 prefix or Parquet file) -> a decoded LabelledSet.

Order of work: list and check the layout first (cheap, and every structural error surfaces
before minutes of decoding), then fetch and decode everything once with a thread pool, then draw
the seeded split over the images that decoded (so each class keeps at least one training image
even when some of its files are broken).

Decoding goes through ``seer_core.augment.decode_image``, the project's guarded decoder, rather
than a bare ``Image.open``: whitelisted formats only (EPS and friends would run external
programs), the pixel count checked from the header (decompression bombs), truncated files refused
rather than grey-filled, EXIF orientation applied, any mode converted to RGB as in training, and
JPEGs decoded at a reduced size when that is enough. Then the standard evaluation transform,
``seer_core.evaluation.preprocess``.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pyarrow as pa
import torch
from PIL import Image

from seer_core.augment.decode import ImageRejected, decode_image
from seer_core.evaluation import preprocess
from seer_core.evaluation.transforms import CROP_RATIO
from services.feed.s3 import parse_s3_uri
from services.labelled.base import (
    SPLITS,
    Entry,
    LabelledDataError,
    LabelledImages,
    LabelledSet,
    logger,
)
from services.labelled.layout import check_same_classes, folder_layout, stratified_split
from services.labelled.parquet import read_parquet
from services.labelled.store import S3Store, Skip, read_local, walk_local

PARQUET_SUFFIX = ".parquet"

#: Decompression-bomb guard (header pixels), the same default as the ingest stage.
MAX_PIXELS = 64_000_000


def eval_resize(image_size: int) -> int:
    """The shorter side before the center crop (256 for 224): preprocess's own default, made
    explicit here because the JPEG draft reduction must be chosen against it."""
    return round(image_size / CROP_RATIO)


def reduction_for(width: int, height: int, resize: int) -> int:
    """The largest JPEG draft reduction (PIL offers 8, 4, 2) whose output keeps the shorter side
    at or above ``resize``: a 4000x3000 photo for 256 decodes at 1/8 (500x375), several times
    faster than a full decode, and the resize that follows still only shrinks."""
    return next((r for r in (8, 4, 2) if min(width, height) // r >= resize), 1)


def decode_entries(entries: Sequence[Entry], image_size: int, *, workers: int,
                   progress: Callable[[int, int], None] | None = None,
                   ) -> tuple[list[torch.Tensor | None], Counter[str], list[str]]:
    """Fetches and decodes every entry with a pool of ``workers`` threads (PIL's decoders and
    resize release the GIL, and S3 reads wait on the network).

    Returns (tensor or None per entry, in entry order; skip counts by reason; a few examples of
    skips as "name: reason: detail"). ``progress(done, total)`` is called from the calling
    thread, with 0 first, then after each image. A LabelledDataError from reading (a store
    refusing access) cancels the rest and propagates.
    """
    resize = eval_resize(image_size)

    def work(entry: Entry) -> torch.Tensor | ImageRejected | Skip:
        try:
            decoded = decode_image(entry.read(), max_pixels=MAX_PIXELS, min_side=1,
                                   reduction_for=lambda w, h: reduction_for(w, h, resize))
            return preprocess(decoded.image, image_size, resize)
        except (ImageRejected, Skip) as exc:
            return exc

    out: list[torch.Tensor | None] = []
    skipped: Counter[str] = Counter()
    examples: list[str] = []
    if progress is not None:
        progress(0, len(entries))
    Image.init()  # load every format plugin once, before threads race to do it
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="labelled") as pool:
        for entry, result in zip(entries, pool.map(work, entries), strict=True):
            if isinstance(result, ImageRejected | Skip):
                skipped[result.reason] += 1
                if len(examples) < 5:
                    examples.append(f"{entry.name}: {result}")
                result = None
            out.append(result)
            if progress is not None:
                progress(len(out), len(entries))
    return out, skipped, examples


def _check_args(image_size: int, val_fraction: float, split_seed: int) -> None:
    def whole(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    for name, value, want, ok in (
        ("image_size", image_size, "an int >= 1", whole(image_size) and image_size >= 1),
        ("val_fraction", val_fraction, "a number in (0, 1)",
         (whole(val_fraction) or isinstance(val_fraction, float)) and 0.0 < val_fraction < 1.0),
        ("split_seed", split_seed, "an int", whole(split_seed)),
    ):
        if not ok:
            raise LabelledDataError(f"{name}: must be {want}, got {value!r}")


def _folder_entries(files: list[str], dirs: list[str], where: str, name_of: Callable[[str], str],
                    reader: Callable[[str], Callable[[], bytes]]) -> tuple[list[Entry], list[str]]:
    layout = folder_layout(files, dirs, where)
    entries = [Entry(name_of(rel), cls, split, reader(rel))
               for split, by_class in layout.items() for cls, rels in by_class.items()
               for rel in rels]
    return entries, sorted(next(iter(layout.values())))


def _catalogue_s3(spec: str, store: S3Store) -> tuple[list[Entry], list[str]]:
    try:
        bucket, key = parse_s3_uri(spec)
    except ValueError as exc:
        raise LabelledDataError(str(exc)) from None
    if key.lower().endswith(PARQUET_SUFFIX):
        try:
            data = store.get(bucket, key, max_bytes=None)
        except Skip:
            raise LabelledDataError(f"not found: {spec}") from None
        return read_parquet(pa.BufferReader(data), spec)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    keys = store.list_keys(bucket, prefix)
    if not keys:
        raise LabelledDataError(f"not found: no objects under s3://{bucket}/{prefix}")
    rels = [k[len(prefix):] for k in keys]
    return _folder_entries([r for r in rels if r and not r.endswith("/")],
                           [r for r in rels if r.endswith("/")],  # "folder" marker objects
                           f"s3://{bucket}/{prefix}".rstrip("/"),
                           lambda rel: f"s3://{bucket}/{prefix}{rel}",
                           lambda rel: partial(store.get, bucket, prefix + rel))


def _catalogue_local(spec: str) -> tuple[list[Entry], list[str]]:
    path = spec.removeprefix("file://")
    if not os.path.exists(path):
        raise LabelledDataError(f"not found: {spec} (no such file or folder)")
    if os.path.isfile(path):
        if not path.lower().endswith(PARQUET_SUFFIX):
            raise LabelledDataError(
                f"{spec} is a file but not a {PARQUET_SUFFIX} file: a labelled set is a folder "
                f"(<class>/<image> or train|val/<class>/<image>) or a Parquet file")
        return read_parquet(path, spec)
    return _folder_entries(*walk_local(path), path.rstrip("/") or "/",
                           lambda rel: os.path.join(path, rel),
                           lambda rel: partial(read_local, os.path.join(path, rel)))


def _stack(indices: Sequence[int], tensors: list[torch.Tensor | None], entries: Sequence[Entry],
           label_id: dict[str, int], image_size: int) -> LabelledImages:
    """One split as tensors. Each decoded image is copied into the split's tensor and dropped
    from ``tensors`` at once, so memory peaks near one copy of the set, not two."""
    images = torch.empty((len(indices), 3, image_size, image_size), dtype=torch.uint8)
    for row, i in enumerate(indices):
        images[row] = tensors[i]
        tensors[i] = None
    labels = torch.tensor([label_id[entries[i].label] for i in indices], dtype=torch.int64)
    return LabelledImages(images, labels, [entries[i].name for i in indices])


def _split(entries: Sequence[Entry], usable: list[int], val_fraction: float,
           split_seed: int) -> dict[str, list[int]]:
    """Indices of usable entries per split, in entry order: the source's split where it gives
    one, else the seeded stratified split over the usable images."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for i in usable:
        if entries[i].split is None:
            by_class[entries[i].label].append(entries[i].name)
    _, val_names = stratified_split(by_class, val_fraction, split_seed)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i in usable:
        out[entries[i].split or ("val" if entries[i].name in val_names else "train")].append(i)
    return out


def _reasons(counts: Counter[str]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))


def load_labelled(spec: str | os.PathLike[str], *, image_size: int = 224,
                  val_fraction: float = 0.2, split_seed: int = 0, endpoint_url: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> LabelledSet:
    """Loads a labelled set in a layout the package docstring lists, decoded and preprocessed
    (``preprocess(img, image_size)`` uint8 tensors) for evaluation.

    A flat layout (or a Parquet file without ``split``) is split per class by ``split_seed``:
    ``val_fraction`` of each class to val, at least one image per class left in train. Classes
    sorted by name are the label ids (integer Parquet labels: sorted by value). Unreadable images
    are skipped, counted by reason in ``skipped`` and logged once; anything else that makes the
    set unusable raises LabelledDataError naming what and where. ``endpoint_url``: else the
    environment's (services.s3); ``progress(done, total)`` is called as images are decoded.
    """
    _check_args(image_size, val_fraction, split_seed)
    spec = os.fspath(spec).strip()
    remote = spec.startswith("s3://")
    store = S3Store(endpoint_url) if remote else None
    try:
        entries, classes = _catalogue_s3(spec, store) if store else _catalogue_local(spec)
        given = [e for e in entries if e.split is not None]
        if given:
            check_same_classes({e.label for e in given if e.split == "train"},
                               {e.label for e in given if e.split == "val"}, spec, "labels")
        if not entries:
            raise LabelledDataError(f"no images in {spec}")
        workers = 16 if remote else max(1, min(8, os.cpu_count() or 1))
        tensors, skipped, examples = decode_entries(entries, image_size, workers=workers,
                                                    progress=progress)
    finally:
        if store is not None:
            store.close()

    if skipped:
        logger.warning(
            "labelled set %s: skipped %d unreadable image(s) of %d (%s); e.g. %s",
            spec, sum(skipped.values()), len(entries), _reasons(skipped), "; ".join(examples),
        )
    usable = [i for i, t in enumerate(tensors) if t is not None]
    if not usable:
        raise LabelledDataError(
            f"no usable images in {spec}: all {len(entries)} were skipped ({_reasons(skipped)})")
    splits = _split(entries, usable, val_fraction, split_seed)
    listed_train = Counter(e.label for e in entries if e.split in ("train", None))
    usable_train = Counter(entries[i].label for i in splits["train"])
    dead = [c for c in classes if listed_train[c] and not usable_train[c]]
    if dead:
        raise LabelledDataError(
            f"{spec}: class(es) {', '.join(dead)} have training images but none could be "
            f"decoded (skipped in all: {_reasons(skipped)}); fix or remove them")
    if not splits["val"]:
        raise LabelledDataError(
            f"{spec}: no validation images: with val_fraction={val_fraction} every class is too "
            "small to spare one (each keeps at least one training image); add images, raise "
            "val_fraction, or lay out train/ and val/ folders")
    label_id = {c: i for i, c in enumerate(classes)}
    result = LabelledSet(
        classes=list(classes),
        train=_stack(splits["train"], tensors, entries, label_id, image_size),
        val=_stack(splits["val"], tensors, entries, label_id, image_size),
        skipped=dict(sorted(skipped.items())),
        source=spec,
    )
    logger.info(
        "labelled set %s: %d classes, %d train and %d val images%s",
        spec, len(classes), len(result.train), len(result.val),
        f", {sum(skipped.values())} skipped" if skipped else "",
    )
    return result
