"""A labelled set in one Parquet file: one row per image, ``image`` bytes and ``label``.

Why Parquet: the usual hand-over format for small labelled collections (Hugging Face exports,
inventories), and one object on S3 instead of thousands. Read with pyarrow, only the columns used.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from services.labelled.base import SPLITS, Entry, LabelledDataError

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_binary(t: pa.DataType) -> bool:
    return any(is_(t) for is_ in (pa.types.is_binary, pa.types.is_large_binary,
                                   pa.types.is_fixed_size_binary, pa.types.is_binary_view))


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def read_parquet(source: Any, display: str) -> tuple[list[Entry], list[str]]:
    """(entries, classes in label-id order) from a Parquet file (a path or a pyarrow buffer).

    Classes are the distinct labels sorted by name; integer labels are sorted by value (so
    labels 0..K-1 keep their ids) and named by their decimal string. An optional ``split``
    column ("train"/"val") fixes each row's split; without it the loader draws the split.
    Rows are named ``<display>#<row>``; every LabelledDataError names ``display``.
    """
    try:
        pfile = pq.ParquetFile(source)
        names = pfile.schema_arrow.names
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise LabelledDataError(f"cannot read Parquet file {display}: {exc}") from None
    missing = [c for c in (IMAGE_COLUMN, LABEL_COLUMN) if c not in names]
    if missing:
        raise LabelledDataError(
            f"Parquet file {display} lacks column(s) {', '.join(missing)}: it has "
            f"{', '.join(names) or 'no columns'}; expected {IMAGE_COLUMN} (bytes), "
            f"{LABEL_COLUMN} (string or int) and optionally {SPLIT_COLUMN} (train/val)")
    columns = [IMAGE_COLUMN, LABEL_COLUMN] + ([SPLIT_COLUMN] if SPLIT_COLUMN in names else [])
    try:
        table = pfile.read(columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise LabelledDataError(f"cannot read Parquet file {display}: {exc}") from None

    image_type, label_type = (_value_type(table.schema.field(c).type)
                              for c in (IMAGE_COLUMN, LABEL_COLUMN))
    numeric = pa.types.is_integer(label_type)
    for column, kind, want, ok in (
            (IMAGE_COLUMN, image_type, "hold bytes (binary)", _is_binary(image_type)),
            (LABEL_COLUMN, label_type, "be string or integer", numeric or _is_string(label_type))):
        if not ok:
            raise LabelledDataError(f"Parquet file {display}: column {column} must {want}, "
                                    f"not {kind}")
    labels = table.column(LABEL_COLUMN).to_pylist()
    for row, value in enumerate(labels):
        if value is None or (not numeric and not str(value).strip()):
            raise LabelledDataError(f"Parquet file {display}: row {row} has no {LABEL_COLUMN}")
    splits: list[str | None] = [None] * len(labels)
    if SPLIT_COLUMN in names:
        splits = table.column(SPLIT_COLUMN).to_pylist()
        bad = sorted({repr(s) for s in splits if s not in SPLITS})
        if bad:
            row = next(i for i, s in enumerate(splits) if s not in SPLITS)
            raise LabelledDataError(
                f"Parquet file {display}: column {SPLIT_COLUMN} holds {', '.join(bad[:10])} "
                f"(first at row {row}); allowed: {', '.join(SPLITS)}")
    order = sorted(set(labels))
    classes = [str(v) for v in order]
    images = table.column(IMAGE_COLUMN).to_pylist()
    del table
    entries = [
        Entry(f"{display}#{row}", str(label), split, partial(bytes, data or b""))
        for row, (data, label, split) in enumerate(zip(images, labels, splits, strict=True))
    ]
    return entries, classes

