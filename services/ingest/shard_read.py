"""The shard read task: random shards → their images, as rows ``{key, data, reason}``, for ever.

The counterpart of :class:`~services.ingest.read.EndlessRead` for ``feed.kind: shards``: where
the object feed pays one GET per image, a read task here draws a shard at random with
replacement, streams it (one GET for a tar, a HEAD and a few ranged GETs for a Parquet table),
and mixes its images with earlier shards' in a bounded shuffle buffer
(``services.feed.shards``). The blocks it yields have the same schema and the same reasons as
the object feed's, so the ingest actor decodes and counts them as it does any other
(``bad_shard`` for a damaged shard or row group). The shards come from the run's owner of the
shard list (``services.ingest.keys``: one listing per refresh for the whole run, whatever the
number of read tasks; a shard found gone is reported back to it); without an owner (a read
outside a Ray stream) from a list of the read task's own.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from services import metrics
from services.feed import FeedEmpty, FeedSpec, ObjectVanished
from services.feed.shards import ShardFile, ShardSample, ShardVisitor, iter_shard_samples
from services.feed.shards.source import ShardSource
from services.ingest.keys import SHARD_BATCH, KeyDrawer, report_vanished
from services.ingest.read import EMPTY_FEED_PAUSE_S, READ_SCHEMA, IngestMetrics
from services.ratelimit import RateLimitedLogger

_log = RateLimitedLogger(logging.getLogger("seer.ingest"), 30.0)


class ShardMetrics:
    """Shard visits (declared at import; see ``services.metrics``). Images per visit is
    ``images / visits``; GETs per image, the shard feed's cost, is
    ``seer_feed_requests_total{op="GET"}`` over ``images``."""

    visits = metrics.counter("seer_ingest_shard_visits_total", "shard visits started")
    vanished = metrics.counter("seer_ingest_shard_vanished_total",
                               "shards drawn and found gone from the store since the listing")
    images = metrics.counter("seer_ingest_shard_images_total", "images read from shards")
    # From the open (a tar's GET) to the visit's end, consumer waits included: a whole shard of
    # 10,000 images at 400 images/s is ~25 s; a small visit, well under a second.
    visit_seconds = metrics.histogram(
        "seer_ingest_shard_visit_seconds", "wall time of a shard visit, from its open",
        (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0))


@dataclass(frozen=True)
class ShardRead:
    """One read task over shards: visit random shards, yield small blocks, for ever. Picklable.

    A block ends at ``block_bytes`` of images or ``block_rows`` rows, whichever comes first
    (small blocks keep the endless producer under backpressure, DESIGN §5). Shards are drawn
    from the run's owner named ``owner`` (in batches of :data:`SHARD_BATCH`), or with no owner
    from this task's own list. Randomness comes from ``os.urandom`` each time the task starts,
    as in EndlessRead: a task Ray ships again must draw other shards. ``max_object_bytes``
    bounds one member (``too_large``), never read into memory past the bound.
    """

    spec: FeedSpec
    block_rows: int
    max_object_bytes: int
    block_bytes: int
    owner: str | None = None

    def drawer(self, source: ShardSource, rng: random.Random) -> Callable[[], str]:
        """The visitor's ``draw``: the owner's next shard, or one of ``source``'s own list
        (listed in this process, waiting at most the retry budget for a first listing)."""
        if self.owner is None:
            return lambda: source.sample(1, rng, timeout=self.spec.retry_budget_s)[0]
        drawer = KeyDrawer(self.owner, self.spec, batch=SHARD_BATCH)
        return lambda: drawer.draw(1)[0]

    def samples(self, source: ShardSource, meter: IngestMetrics
                ) -> Iterator[ShardSample | None]:
        """Endless samples through ``source``; no shard to draw pauses, it does not stop (None
        then: the rows so far go out rather than wait for shards)."""
        spec = self.spec
        opened_at = 0.0

        def opener(shard: str) -> ShardFile:
            nonlocal opened_at
            ShardMetrics.visits.inc()
            opened_at = time.perf_counter()  # a shard's fetch time is its open (GET or HEAD)
            try:
                return source.open(shard)
            except (ObjectVanished, FileNotFoundError):
                ShardMetrics.vanished.inc()
                if self.owner is not None:
                    report_vanished(self.owner, shard)  # out of the run's list, too
                raise
            finally:
                meter.fetch_seconds.observe(time.perf_counter() - opened_at)

        def read(fileobj: ShardFile, shard: str) -> Iterator[ShardSample]:
            images = 0
            try:
                with contextlib.closing(iter_shard_samples(
                        fileobj, shard, extensions=spec.extensions,
                        image_column=spec.image_column,
                        max_member_bytes=self.max_object_bytes)) as samples:
                    for sample in samples:
                        if sample.data is not None:
                            images += 1
                        yield sample
            finally:
                ShardMetrics.images.inc(images)
                ShardMetrics.visit_seconds.observe(time.perf_counter() - opened_at)

        rng = random.Random()
        visitor = ShardVisitor(self.drawer(source, rng), opener, rng,
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
        source = ShardSource(self.spec)  # opens shards; lists only without an owner
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
