"""From a listing to classes and splits: the folder layouts, and the seeded stratified split.

Pure functions over relative paths (``/``-separated), so a local folder and an S3 prefix are
sorted by exactly the same rules: only how the listing is obtained differs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence

from services.feed.base import DEFAULT_IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from services.labelled.base import SPLITS, LabelledDataError, is_hidden

#: {split or None (flat layout: to be split by seed): {class: [relative image paths, sorted]}}
Layout = dict[str | None, dict[str, list[str]]]


def _visible(path: str) -> bool:
    return not any(is_hidden(part) for part in path.split("/") if part)


def folder_layout(files: Iterable[str], dirs: Iterable[str], where: str) -> Layout:
    """Sorts the files under a root into splits and classes.

    ``files`` are file paths relative to the root; ``dirs`` are folders known to exist even when
    they hold no file (an S3 "folder" marker, an empty local folder), so that an empty class
    folder is reported rather than silently missing. Hidden files and folders are ignored, and so
    are files without an image extension (the feed's list: a README beside the images is
    harmless). Images in sub-folders of a class folder count too (as in torchvision's ImageFolder).

    ``ROOT/train/<class>/`` + ``ROOT/val/<class>/`` is the split layout when both ``train`` and
    ``val`` exist; otherwise every top-level folder is a class. Raises LabelledDataError naming
    ``where`` for: no class folders, an empty class folder, class sets that differ between train
    and val, and a lone ``train``/``val`` folder holding class folders (half a split layout).
    """
    visible_files = [f.strip("/") for f in files if _visible(f) and f.strip("/")]
    folders = {d.strip("/") for d in dirs if _visible(d) and d.strip("/")}
    for f in visible_files:
        parts = f.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    top = {d.split("/")[0] for d in folders}
    if all(s in top for s in SPLITS):
        layout: Layout = {s: _classes(f"{s}/", visible_files, folders, where) for s in SPLITS}
        check_same_classes(layout["train"], layout["val"], where, "class folders")
        return layout
    for s in SPLITS:
        other = next(o for o in SPLITS if o != s)
        holds_classes = any(d.startswith(f"{s}/") for d in folders)
        holds_images = any(f.startswith(f"{s}/") and f.count("/") == 1 for f in visible_files
                           if f.lower().endswith(IMAGE_EXTENSIONS))
        if s in top and holds_classes and not holds_images:
            raise LabelledDataError(
                f"{_join(where, s)}/ holds class folders but {_join(where, other)}/ does not "
                f"exist: a split layout needs both {s}/<class>/ and {other}/<class>/ (or put the "
                f"class folders directly in {where} to have the split drawn by seed)")
    return {None: _classes("", visible_files, folders, where)}


def _join(where: str, rel: str) -> str:
    return f"{where.rstrip('/')}/{rel}" if rel else where


def _classes(prefix: str, files: list[str], folders: set[str], where: str) -> dict[str, list[str]]:
    """{class: sorted image paths} for the class folders directly under ``prefix``."""
    names = {d[len(prefix):].split("/")[0] for d in folders if d.startswith(prefix)}
    names.discard("")
    if not names:
        raise LabelledDataError(
            f"no class folders in {_join(where, prefix)}: expected <class>/<image> (or "
            "train/<class>/<image> and val/<class>/<image>)")
    found: dict[str, list[str]] = {name: [] for name in names}
    for f in files:
        if not f.startswith(prefix) or not f.lower().endswith(IMAGE_EXTENSIONS):
            continue
        cls, sep, _ = f[len(prefix):].partition("/")
        if sep:  # images lying directly in the root (or in train/, val/) belong to no class
            found[cls].append(f)
    for name in sorted(names):
        if not found[name]:
            raise LabelledDataError(
                f"empty class folder {_join(where, prefix + name)}/: no image files "
                f"({' '.join(IMAGE_EXTENSIONS)})")
    return {name: sorted(found[name]) for name in sorted(names)}


def check_same_classes(train: Iterable[str], val: Iterable[str], where: str, what: str) -> None:
    """LabelledDataError naming the classes (``what``: folders, labels) found in one split only."""
    train, val = set(train), set(val)
    only = {"train": sorted(train - val), "val": sorted(val - train)}
    if only["train"] or only["val"]:
        parts = [f"only in {s}: {', '.join(names)}" for s, names in only.items() if names]
        raise LabelledDataError(
            f"train and val {what} differ in {where}: {'; '.join(parts)} (both splits need the "
            "same classes)")


def val_count(n: int, val_fraction: float) -> int:
    """Images of a class of ``n`` that go to val: ``val_fraction`` of them, rounded half up,
    leaving at least one in train (a class absent from train cannot be predicted at all)."""
    return max(0, min(n - 1, math.floor(val_fraction * n + 0.5)))


def stratified_split(by_class: Mapping[str, Sequence[str]], val_fraction: float,
                     seed: int) -> tuple[set[str], set[str]]:
    """Draws val from each class separately: (train names, val names).

    Each class is shuffled by its own generator, seeded from (``seed``, class name), over its
    names in sorted order, so the split of a class depends only on the seed and on that class's
    own images: adding a class or reordering the listing changes nothing else. (A string seed
    is hashed with SHA-512 by ``random``, the same in every process and Python version.)
    """
    train: set[str] = set()
    val: set[str] = set()
    for cls in sorted(by_class):
        names = sorted(by_class[cls])
        random.Random(f"seer-labelled-split/{seed}/{cls}").shuffle(names)
        k = val_count(len(names), val_fraction)
        val.update(names[:k])
        train.update(names[k:])
    return train, val

