"""Sampling shards for ever, the way webdataset's resampled shards do: draw a shard uniformly at
random *with replacement*, stream it, mix what it yields into a bounded shuffle buffer, move on.

Why with replacement: there are no epochs (DESIGN §3), the shard list changes underneath (new
shards are picked up, vanished ones skipped), and read tasks need no coordination to be
independent. Why a shuffle buffer: a shard is written in one go (one crawl, one site, one
class), so the images of one shard are correlated; without mixing, a training batch drawn from
a few read tasks would be a few shards. ``images_per_visit`` bounds how long a task stays on one
shard (the whole shard by default: fewest GETs; smaller: better mixing for the same buffer).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from services.feed.base import FeedEmpty, ObjectTooLarge, ObjectVanished
from services.feed.shards.readers import (
    ShardFile,
    ShardSample,
    iter_shard_samples,
    store_failure,
)
from services.ratelimit import RateLimitedLogger

logger = logging.getLogger("seer.feed.shards")
log = RateLimitedLogger(logger, 30.0)

T = TypeVar("T")

#: A reader: (open file object, shard name) -> the shard's samples; never raises for bad input.
ShardReader = Callable[[ShardFile, str], Iterator[ShardSample]]


class ShuffleBuffer(Generic[T]):
    """A bounded random-exchange buffer: once full, each item in sends a random resident out.

    Memory is ``capacity`` items, that is ``capacity`` x the image size (1,000 images of 150 kB:
    150 MB per read task): the one knob trading memory for mixing. An item stays a geometric
    number of exchanges (mean ``capacity``), so the images leaving it come from the last several
    shard visits rather than the current one. ``capacity`` 0 passes items straight through.
    """

    def __init__(self, capacity: int, rng: random.Random) -> None:
        if capacity < 0:
            raise ValueError(f"shuffle buffer capacity must be >= 0, got {capacity}")
        self.capacity, self.rng = capacity, rng
        self.items: list[T] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: T) -> T | None:
        """Keeps ``item``; returns a random resident once the buffer is full, else None."""
        if len(self.items) < self.capacity:
            self.items.append(item)
            return None
        if not self.items:
            return item
        index = self.rng.randrange(len(self.items))
        out, self.items[index] = self.items[index], item
        return out

    def drain(self) -> Iterator[T]:
        """The residents in random order, emptying the buffer."""
        self.rng.shuffle(self.items)
        while self.items:
            yield self.items.pop()


class ShardVisitor:
    """Endless :class:`ShardSample` s from random shards; iterate it once, in one read task.

    ``draw`` returns the next shard to visit, drawn uniformly at random with replacement from
    the current list (the run's owner's, or a list of the read task's own), and is called before
    every visit, so a refreshed listing (new shards, vanished ones gone) applies at the next
    one; it raises FeedEmpty when there is none, and the visitor passes it on after handing out
    the buffered images. ``opener`` turns a shard name into a file object for ``read`` (a
    streaming body for a tar, a seekable :class:`~services.feed.shards.ranged.RangedReader` for
    Parquet); it raises FileNotFoundError or ObjectVanished for a shard gone since the listing
    (one ``vanished`` sample, counted in :meth:`stats`, and the next shard), FetchFailed (or
    anything else) for a store that did not answer (``fetch_error``). Failed samples skip the
    shuffle buffer: they carry no image to mix and are counted sooner. The file object is
    closed after each visit.
    """

    def __init__(self, draw: Callable[[], str], opener: Callable[[str], ShardFile],
                 rng: random.Random, *, shuffle_buffer: int, images_per_visit: int | None = None,
                 read: ShardReader = iter_shard_samples) -> None:
        if images_per_visit is not None and images_per_visit < 1:
            raise ValueError(f"images_per_visit must be >= 1 or None, got {images_per_visit}")
        self.draw, self.opener, self.rng, self.read = draw, opener, rng, read
        self.images_per_visit = images_per_visit
        self.buffer: ShuffleBuffer[ShardSample] = ShuffleBuffer(shuffle_buffer, rng)
        self.counts: Counter[str] = Counter()

    def stats(self) -> dict[str, float]:
        """Monotonic counters for metrics: ``visits`` (shards drawn), ``vanished`` (drawn but
        gone), ``images`` (image samples read), plus ``buffered`` (images in the buffer now)."""
        return {"visits": 0, "vanished": 0, "images": 0, **self.counts,
                "buffered": len(self.buffer)}

    def __iter__(self) -> Iterator[ShardSample]:
        while True:
            try:
                shard = self.draw()
            except FeedEmpty:
                yield from self.buffer.drain()
                raise
            self.counts["visits"] += 1
            for sample in self.visit(shard):
                if sample.data is None:
                    yield sample
                elif (out := self.buffer.add(sample)) is not None:
                    yield out

    def visit(self, shard: str) -> Iterator[ShardSample]:
        """One visit: ``shard``'s samples up to ``images_per_visit`` images, or one failure."""
        try:
            fileobj = self.opener(shard)
        except (FileNotFoundError, ObjectVanished) as exc:
            self.counts["vanished"] += 1
            yield store_failure(shard, exc)
            return
        except ObjectTooLarge as exc:  # an opener that refuses to read a huge shard whole
            log.warning("too_large", "skipping shard %s: %s", shard, exc)
            yield ShardSample(shard, None, "too_large")
            return
        except Exception as exc:  # FetchFailed, or the client's own error: fetch_error, go on
            yield store_failure(shard, exc)
            return
        samples = self.read(fileobj, shard)
        images = 0
        try:
            for sample in samples:
                if sample.data is not None:
                    images += 1
                    self.counts["images"] += 1
                yield sample
                if self.images_per_visit is not None and images >= self.images_per_visit:
                    break
        finally:
            close = getattr(samples, "close", None)  # a generator: run its cleanup now
            if close is not None:
                close()
            fileobj.close()
