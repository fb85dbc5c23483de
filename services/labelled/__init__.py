"""Labelled data sets for evaluation: a folder, an S3 prefix or a Parquet file, decoded once.

The evaluator (kNN, linear probe, low-shot, fine-tuning) needs a small labelled set as tensors,
split into train and val. :func:`load_labelled` accepts the layouts such sets come in:

- ``ROOT/train/<class>/*`` + ``ROOT/val/<class>/*`` (what ``seer seed --labelled`` writes);
- ``ROOT/<class>/*``, split reproducibly per class by a seed;
- a Parquet file with ``image``, ``label`` and optionally ``split`` columns;

where ROOT is a local folder or ``s3://bucket/prefix``, and the Parquet file local or on S3.
"""

from services.labelled.base import (
    LabelledDataError,
    LabelledImages,
    LabelledSet,
)
from services.labelled.load import load_labelled

__all__ = [
    "LabelledDataError", "LabelledImages", "LabelledSet", "load_labelled",
]
