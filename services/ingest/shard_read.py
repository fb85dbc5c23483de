"""The shard read task: random shards → their images, as rows ``{key, data, reason}``, for ever.

The counterpart of :class:`~services.ingest.read.EndlessRead` for ``feed.kind: shards``: where
the object feed pays one GET per image, a read task here draws a shard at random with
replacement, streams it (one GET for a tar, a HEAD and a few ranged GETs for a Parquet table),
and mixes its images with earlier shards' in a bounded shuffle buffer
(``services.feed.shards``). The blocks it yields have the same schema and the same reasons as
the object feed's, so the ingest actor decodes and counts them as it does any other
(``bad_shard`` for a damaged shard or row group). Each read task lists its own shards
(``services.feed.shards.source``: no LIST at all for a brace pattern on S3).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from services.feed import FeedEmpty, FeedSpec
from services.feed.shards import ShardFile, ShardSample, ShardVisitor, iter_shard_samples
from services.feed.shards.source import ShardSource
from services.ingest.read import EMPTY_FEED_PAUSE_S, READ_SCHEMA, IngestMetrics
from services.ratelimit import RateLimitedLogger

_log = RateLimitedLogger(logging.getLogger("seer.ingest"), 30.0)


@dataclass(frozen=True)
class ShardRead:
    """One read task over shards: visit random shards, yield small blocks, for ever. Picklable.

    A block ends at ``block_bytes`` of images or ``block_rows`` rows, whichever comes first
    (small blocks keep the endless producer under backpressure, DESIGN §5). Randomness comes
    from ``os.urandom`` each time the task starts, as in EndlessRead: a task Ray ships again
    must draw other shards. ``max_object_bytes`` bounds one member (``too_large``), never read
    into memory past the bound.
    """

    spec: FeedSpec
    block_rows: int
    max_object_bytes: int
    block_bytes: int

    def samples(self, source: ShardSource, meter: IngestMetrics
                ) -> Iterator[ShardSample | None]:
        """Endless samples from ``source``; an empty shard list pauses, it does not stop (None
        then: the rows so far go out rather than wait for shards)."""
        spec = self.spec

        def opener(shard: str) -> ShardFile:
            start = time.perf_counter()  # the fetch time of a shard is its open (GET or HEAD)
            try:
                return source.open(shard)
            finally:
                meter.fetch_seconds.observe(time.perf_counter() - start)

        def read(fileobj: ShardFile, shard: str) -> Iterator[ShardSample]:
            return iter_shard_samples(fileobj, shard, extensions=spec.extensions,
                                      image_column=spec.image_column,
                                      max_member_bytes=self.max_object_bytes)

        visitor = ShardVisitor(source.names, opener, random.Random(),
                               shuffle_buffer=spec.shuffle_buffer,
                               images_per_visit=spec.images_per_shard_visit, read=read)
        while True:
            try:
                yield from visitor
            except FeedEmpty as exc:  # nothing listed (yet): slow down, do not stop
                _log.error("feed-empty", "no shards to draw: %s", exc)
                yield None
                time.sleep(EMPTY_FEED_PAUSE_S)

    def __call__(self) -> Iterator[pa.Table]:
        meter = IngestMetrics()
        source = ShardSource(self.spec)
        rows: list[ShardSample] = []
        size = 0
        try:
            for sample in self.samples(source, meter):
                if sample is not None:
                    rows.append(sample)
                    if sample.data is not None:
                        size += len(sample.data)
                        meter.bytes.inc(len(sample.data))
                if rows and (sample is None or size >= self.block_bytes
                             or len(rows) >= self.block_rows):
                    yield _table(rows)
                    rows, size = [], 0
        finally:
            source.close()


def _table(rows: list[ShardSample]) -> pa.Table:
    return pa.Table.from_pydict({"key": [r.key for r in rows],
                                 "data": [r.data or b"" for r in rows],
                                 "reason": [r.reason for r in rows]}, schema=READ_SCHEMA)
