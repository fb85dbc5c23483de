"""What a labelled set is, and the one error a bad one raises: what every loader module shares."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

logger = logging.getLogger("seer.labelled")

#: The two splits, in the order they are reported.
SPLITS: tuple[str, ...] = ("train", "val")


class LabelledDataError(ValueError):
    """A labelled set that cannot be used as given; the message names what is wrong and where."""


@dataclass
class LabelledImages:
    """One split: preprocessed images, their label ids, and where each came from."""

    images: torch.Tensor  # uint8 [N, 3, S, S], already preprocess()ed
    labels: torch.Tensor  # int64 [N], indices into LabelledSet.classes
    names: list[str]  # where each image came from (path, s3:// URI, or parquet row)

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class LabelledSet:
    """A labelled data set ready for feature extraction: classes sorted, both splits decoded."""

    classes: list[str]
    train: LabelledImages
    val: LabelledImages
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> unreadable images
    source: str = ""  # the spec, for messages

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Entry:
    """One image before decoding: where it is, its class name, and its split when the source
    fixes it (None: to be drawn by the seeded split). ``read`` returns the encoded bytes."""

    name: str
    label: str
    split: str | None
    read: Callable[[], bytes]


def is_hidden(part: str) -> bool:
    """Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``, macOS ``._x.jpg``), and
    the ``__MACOSX`` folder that zip archives made on a Mac carry: never classes, never images."""
    return part.startswith(".") or part == "__MACOSX"
