"""Bytes -> preprocessed uint8 tensors, many at once, skipping what cannot be decoded.

Decoding goes through ``seer_core.augment.decode_image``, the project's guarded decoder, rather
than a bare ``Image.open``: it opens only whitelisted formats (EPS and friends would run external
programs), checks the pixel count from the header before any pixel is decoded (decompression
bombs), refuses truncated files instead of grey-filling them, applies the EXIF orientation
(what ``ImageOps.exif_transpose`` does), converts any mode to RGB (transparency over the ImageNet
mean, as in training), and decodes JPEGs at a reduced size when asked. The result then gets the
standard evaluation transform, ``seer_core.evaluation.preprocess``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import torch
from PIL import Image

from seer_core.augment.decode import ImageRejected, decode_image
from seer_core.evaluation import preprocess
from seer_core.evaluation.transforms import CROP_RATIO
from services.labelled.base import Entry
from services.labelled.store import Skip

#: Decompression-bomb guard (header pixels), the same default as the ingest stage.
MAX_PIXELS = 64_000_000

#: The largest JPEG reductions PIL's draft mode offers.
_REDUCTIONS = (8, 4, 2)


def eval_resize(image_size: int) -> int:
    """The shorter side before the center crop (256 for 224): preprocess's own default, made
    explicit here because the JPEG draft reduction must be chosen against it."""
    return round(image_size / CROP_RATIO)


def reduction_for(width: int, height: int, resize: int) -> int:
    """The largest JPEG draft reduction whose output keeps the shorter side at or above
    ``resize``: a 4000x3000 photo for 256 decodes at 1/8 (500x375), several times faster than a
    full decode, and the resize that follows still only shrinks."""
    short = min(width, height)
    return next((r for r in _REDUCTIONS if short // r >= resize), 1)


def decode_to_tensor(data: bytes, image_size: int) -> torch.Tensor:
    """uint8 [3, image_size, image_size]; raises ImageRejected (reason in REJECT_REASONS)."""
    resize = eval_resize(image_size)
    decoded = decode_image(
        data,
        max_pixels=MAX_PIXELS,
        min_side=1,
        reduction_for=lambda w, h: reduction_for(w, h, resize),
    )
    return preprocess(decoded.image, image_size, resize)


def default_workers(remote: bool) -> int:
    """Threads for fetch + decode: many for S3 (waiting on the network), else about the cores
    (PIL's decoders and resize release the GIL, so threads do use several cores)."""
    if remote:
        return 16
    return max(1, min(8, os.cpu_count() or 1))


def decode_entries(
    entries: Sequence[Entry],
    image_size: int,
    *,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[torch.Tensor | None], Counter[str], list[str]]:
    """Fetches and decodes every entry with a bounded thread pool.

    Returns (tensor or None per entry, in entry order; skip counts by reason; a few examples of
    skips as "name: reason: detail"). ``progress(done, total)`` is called from the calling thread,
    once with 0 before the first image and after each image (decoded or skipped). A
    LabelledDataError from reading (a store refusing access) cancels the rest and propagates.
    """
    total = len(entries)
    out: list[torch.Tensor | None] = [None] * total
    skipped: Counter[str] = Counter()
    examples: list[str] = []
    if progress is not None:
        progress(0, total)
    if total == 0:
        return out, skipped, examples
    Image.init()  # load every format plugin once, before threads race to do it

    def work(entry: Entry) -> torch.Tensor:
        return decode_to_tensor(entry.read(), image_size)

    done = 0
    # Submit in a bounded window: the pending futures (and their bytes) stay few.
    window = max(1, workers) * 4
    pending: dict[Future[torch.Tensor], int] = {}
    next_index = 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="labelled") as pool:
        try:
            while next_index < total or pending:
                while next_index < total and len(pending) < window:
                    pending[pool.submit(work, entries[next_index])] = next_index
                    next_index += 1
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = pending.pop(future)
                    try:
                        out[index] = future.result()
                    except (ImageRejected, Skip) as exc:
                        skipped[exc.reason] += 1
                        if len(examples) < 5:
                            examples.append(f"{entries[index].name}: {exc}")
                    done += 1
                    if progress is not None:
                        progress(done, total)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return out, skipped, examples
