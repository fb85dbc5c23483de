"""``load_labelled``: a spec (folder, S3 prefix or Parquet file) -> a decoded LabelledSet.

Order of work: list and check the layout first (cheap, and every structural error surfaces
before minutes of decoding), then fetch and decode everything once with a bounded thread pool,
then draw the seeded split over the images that decoded (so each class keeps at least one
training image even when some of its files are broken).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial

import pyarrow as pa
import torch

from services.labelled.base import (
    SPLITS,
    Entry,
    LabelledDataError,
    LabelledImages,
    LabelledSet,
    logger,
)
from services.labelled.decode import decode_entries, default_workers
from services.labelled.layout import (
    check_same_labels,
    folder_layout,
    group_by_class,
    stratified_split,
)
from services.labelled.parquet import read_parquet
from services.labelled.store import S3Store, Skip, parse_s3, read_local, walk_local

PARQUET_SUFFIX = ".parquet"


def _check_args(image_size: int, val_fraction: float, split_seed: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise LabelledDataError(f"image_size: must be an int >= 1, got {image_size!r}")
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, int | float)
        or not 0.0 < val_fraction < 1.0
    ):
        raise LabelledDataError(f"val_fraction: must be a number in (0, 1), got {val_fraction!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise LabelledDataError(f"split_seed: must be an int, got {split_seed!r}")


def _folder_entries(
    files: list[str], dirs: list[str], where: str, name_of: Callable[[str], str],
    reader: Callable[[str], Callable[[], bytes]],
) -> tuple[list[Entry], list[str]]:
    layout = folder_layout(files, dirs, where)
    entries = [
        Entry(name_of(rel), cls, split, reader(rel))
        for split, by_class in layout.items()
        for cls, rels in by_class.items()
        for rel in rels
    ]
    classes = sorted(next(iter(layout.values())))
    return entries, classes


def _catalogue_s3(spec: str, store: S3Store) -> tuple[list[Entry], list[str]]:
    bucket, key = parse_s3(spec)
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
    files = [r for r in rels if r and not r.endswith("/")]
    dirs = [r for r in rels if r.endswith("/")]  # "folder" marker objects
    where = f"s3://{bucket}/{prefix}".rstrip("/")
    return _folder_entries(
        files,
        dirs,
        where,
        lambda rel: f"s3://{bucket}/{prefix}{rel}",
        lambda rel: partial(store.get, bucket, prefix + rel),
    )


def _catalogue_local(spec: str) -> tuple[list[Entry], list[str]]:
    path = spec.removeprefix("file://")
    if not os.path.exists(path):
        raise LabelledDataError(f"not found: {spec} (no such file or folder)")
    if os.path.isfile(path):
        if not path.lower().endswith(PARQUET_SUFFIX):
            raise LabelledDataError(
                f"{spec} is a file but not a {PARQUET_SUFFIX} file: a labelled set is a folder "
                f"(<class>/<image> or train|val/<class>/<image>) or a Parquet file"
            )
        return read_parquet(path, spec)
    files, dirs = walk_local(path)
    return _folder_entries(
        files,
        dirs,
        path.rstrip("/") or "/",
        lambda rel: os.path.join(path, rel),
        lambda rel: partial(read_local, os.path.join(path, rel)),
    )


def _stack(
    indices: Sequence[int], tensors: list[torch.Tensor | None], entries: Sequence[Entry],
    label_id: dict[str, int], image_size: int,
) -> LabelledImages:
    """One split as tensors. Each decoded image is copied into the split's tensor and dropped
    from ``tensors`` at once, so memory peaks near one copy of the set, not two."""
    images = torch.empty((len(indices), 3, image_size, image_size), dtype=torch.uint8)
    for row, i in enumerate(indices):
        images[row] = tensors[i]
        tensors[i] = None
    labels = torch.tensor([label_id[entries[i].label] for i in indices], dtype=torch.int64)
    return LabelledImages(images, labels, [entries[i].name for i in indices])


def _split(
    entries: Sequence[Entry], usable: list[int], val_fraction: float, split_seed: int
) -> dict[str, list[int]]:
    """Indices of usable entries per split, in entry order: the source's split where it gives
    one, else the seeded stratified split over the usable images."""
    to_draw = [i for i in usable if entries[i].split is None]
    train_names, val_names = stratified_split(
        group_by_class((entries[i].label, entries[i].name) for i in to_draw),
        val_fraction,
        split_seed,
    )
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i in usable:
        split = entries[i].split
        if split is None:
            split = "val" if entries[i].name in val_names else "train"
            assert split == "val" or entries[i].name in train_names
        out[split].append(i)
    return out


def _reasons(counts: Counter[str]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))


def load_labelled(
    spec: str,
    *,
    image_size: int = 224,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    endpoint_url: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LabelledSet:
    """Loads a labelled set, decoded and preprocessed for evaluation.

    ``spec``: a local folder or ``s3://bucket/prefix`` holding ``train/<class>/*`` and
    ``val/<class>/*`` (split as laid out; identical class sets) or only ``<class>/*`` (split
    drawn per class by ``split_seed``: ``val_fraction`` of each class to val, at least one image
    per class left in train); or a Parquet file (local or ``s3://``) with columns ``image``
    (bytes), ``label`` (string or int) and optionally ``split`` ("train"/"val"; without it the
    split is drawn as for a flat folder). Classes sorted by name are the label ids (integer
    Parquet labels: sorted by value). Images: ``preprocess(img, image_size)`` uint8 tensors.

    Unreadable images are skipped, counted by reason in ``skipped`` and logged once (logger
    ``seer.labelled``). Everything else that makes the set unusable raises LabelledDataError
    naming what and where. ``endpoint_url``: the S3 endpoint (else the environment's, as
    ``services.storage.s3_endpoint`` resolves it); credentials only from the environment.
    ``progress(done, total)`` is called as images are decoded.
    """
    _check_args(image_size, val_fraction, split_seed)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise LabelledDataError(f"labelled set: need a folder, s3:// URI or Parquet file, got "
                                f"{spec!r}")
    spec = spec.strip()
    remote = spec.startswith("s3://")
    store = S3Store(endpoint_url) if remote else None
    try:
        entries, classes = (
            _catalogue_s3(spec, store) if store is not None else _catalogue_local(spec)
        )
        given = [e for e in entries if e.split is not None]
        if given:
            check_same_labels(
                {e.label for e in given if e.split == "train"},
                {e.label for e in given if e.split == "val"},
                spec,
            )
        if not entries:
            raise LabelledDataError(f"no images in {spec}")
        tensors, skipped, examples = decode_entries(
            entries, image_size, workers=default_workers(remote), progress=progress
        )
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
            f"no usable images in {spec}: all {len(entries)} were skipped ({_reasons(skipped)})"
        )
    splits = _split(entries, usable, val_fraction, split_seed)
    listed_train = Counter(e.label for e in entries if e.split in ("train", None))
    usable_train = Counter(entries[i].label for i in splits["train"])
    dead = [c for c in classes if listed_train[c] and not usable_train[c]]
    if dead:
        raise LabelledDataError(
            f"{spec}: class(es) {', '.join(dead)} have training images but none could be "
            f"decoded (skipped in all: {_reasons(skipped)}); fix or remove them"
        )
    if not splits["val"]:
        raise LabelledDataError(
            f"{spec}: no validation images: with val_fraction={val_fraction} every class is too "
            "small to spare one (each keeps at least one training image); add images, raise "
            "val_fraction, or lay out train/ and val/ folders"
        )
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
