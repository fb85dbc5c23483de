"""The read tasks: random keys from the feed → bytes, as rows ``{key, data, reason}``.

Each endless read task (:class:`EndlessRead`) draws ``ingest.chunk_images`` fresh random keys at
a time (uniform, with replacement; the pool refreshes underneath), fetches them and yields small
blocks, chunk after chunk, for ever: no pass boundary, hence no barrier or restart.

Every way an object can fail ends as one *reason* (:data:`REASONS`), counted once in
``seer_ingest_failures_total{reason=...}`` by the ingest actor and logged at a rate limit, never
an exception that stops the stream (DESIGN §3): ``vanished`` (deleted since it was listed),
``fetch_error`` (the store did not answer within the feed's retries, or any other fetch error),
``too_large`` (over ``ingest.max_object_bytes``, checked here so that an oversized object goes no
further than the process that fetched it; or a header declaring over ``augment.max_pixels``),
``too_small`` (a side under ``augment.min_side``), ``not_image``, ``corrupt``.
"""

from __future__ import annotations

import atexit
import logging
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa
from ray.data import DataContext
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from seer_core.config import FeedConfig, SeerConfig
from services import metrics
from services.feed import (
    FeedEmpty,
    FeedSpec,
    FetchFailed,
    ObjectTooLarge,
    ObjectVanished,
    PooledFeed,
    open_feed,
)
from services.ingest.keys import KeyDrawer, report_vanished
from services.ratelimit import RateLimitedLogger

logger = logging.getLogger("seer.ingest")
_log = RateLimitedLogger(logger, 30.0)

#: Every reason an object can be skipped for; the ``reason`` label of the failure metric.
REASONS = ("vanished", "fetch_error", "too_large", "too_small", "not_image", "corrupt", "bad_shard")

#: Columns of the blocks the read tasks yield ("reason": "" when fetched, else one of REASONS).
READ_SCHEMA = pa.schema([("key", pa.string()), ("data", pa.binary()), ("reason", pa.string())])

#: Pause after the feed gave up (store down or empty) before drawing again: the feed already
#: waited its retry budget, so this only keeps an empty store from being hammered.
EMPTY_FEED_PAUSE_S = 1.0


class IngestMetrics:
    """The ingest stage's metrics (declared at import; see ``services.metrics``)."""

    images = metrics.counter("seer_ingest_images_total", "images turned into multi-crop samples")
    bytes = metrics.counter("seer_ingest_bytes_total", "encoded bytes fetched from the feed")
    failures = metrics.counter(
        "seer_ingest_failures_total", "objects skipped, by reason", ("reason",))
    # Decode + multi-crop: ~2 ms (small PNG) to ~1 s (a 60 MP JPEG on a slow core).
    decode_seconds = metrics.histogram(
        "seer_ingest_decode_seconds", "decode + multi-crop time per image",
        (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
    # A fetch: ~1 ms (local file) up to the feed's retry budget (minutes) during an outage.
    fetch_seconds = metrics.histogram(
        "seer_ingest_fetch_seconds", "fetch time per object, retries included",
        (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
         120.0, 300.0))


def feed_spec(cfg: FeedConfig | SeerConfig) -> FeedSpec:
    """The picklable FeedSpec a config describes (what each read task opens): the same fields,
    one renamed."""
    fields = (cfg.feed if isinstance(cfg, SeerConfig) else cfg).model_dump()
    fields["idle_stop_s"] = fields.pop("idle_stop_seconds")
    return FeedSpec(**fields)


# One open feed per spec per process: Ray reuses worker processes across read tasks, so the key
# pool (a million keys in the paper preset) and its listing are paid once per process. Its
# lifetime is bounded instead: an unused feed parks its refresher (feed.pooled); asking for
# another spec closes the feeds of other specs with no call in flight (a Ray worker runs one
# task at a time, so a new spec means the old stream is over); a feed found closed is replaced;
# at exit every feed is closed, so refreshers and boto3 clients stop before teardown.
_FEEDS: dict[FeedSpec, PooledFeed] = {}
_FEEDS_LOCK = threading.Lock()


def process_feed(spec: FeedSpec) -> PooledFeed:
    """The feed for ``spec`` shared by everything in this process (opened on first use). Under
    a key owner it only fetches, so it never lists (its refresher starts on first sample).

    Ask again for each task (a dictionary lookup): the feed of a spec no longer asked for may
    be closed.
    """
    with _FEEDS_LOCK:
        feed = _FEEDS.get(spec)
        if feed is not None and not feed.closed:
            return feed
        stale = [_FEEDS.pop(s) for s, other in list(_FEEDS.items())
                 if s != spec and (other.closed or not other.calls_in_flight())]
        feed = _FEEDS[spec] = open_feed(spec)
    for old in stale:  # outside the lock: closing joins a refresher, a request's time
        old.close()
    return feed


def close_process_feeds(timeout: float | None = None) -> None:
    """Closes this process's shared feeds (``timeout``: the wait for each refresher; None: the
    feed's own bound)."""
    with _FEEDS_LOCK:
        feeds = list(_FEEDS.values())
        _FEEDS.clear()
    for feed in feeds:
        feed.close(timeout=timeout)


atexit.register(close_process_feeds, 5.0)


class Fetched(NamedTuple):
    """One object after the fetch and the byte-size guard: ``data`` or a ``reason``."""

    key: str
    data: bytes | None
    reason: str | None = None


def size_guard(key: str, data: bytes, max_bytes: int, log: RateLimitedLogger) -> Fetched:
    """``data``, or ``too_large`` (logged) when it holds more than ``max_bytes``."""
    if len(data) <= max_bytes:
        return Fetched(key, data)
    log.warning("too_large", "skipping %s: too_large %d bytes > %d", key, len(data), max_bytes)
    return Fetched(key, None, "too_large")


def fetch_object(feed: PooledFeed, key: str, max_object_bytes: int, meter: IngestMetrics,
                 log: RateLimitedLogger = _log) -> Fetched:
    """Fetches ``key`` and applies the byte-size guard; never raises for a bad object.

    Records bytes and fetch time here, where the fetch happens; a failure is carried as
    ``reason`` to the one place that counts it (the ingest actor), so it is counted once.
    """
    start = time.perf_counter()
    try:
        data = feed.fetch(key, max_bytes=max_object_bytes)
    except ObjectTooLarge as exc:
        reason, detail = "too_large", f"{exc.size} bytes > {exc.limit}"
    except ObjectVanished:
        reason, detail = "vanished", ""
    except FetchFailed as exc:
        reason, detail = "fetch_error", exc.reason
    except Exception as exc:  # a feed bug or an unforeseen client error: skip, never stop
        reason, detail = "fetch_error", type(exc).__name__
    else:
        reason = detail = ""
        meter.bytes.inc(len(data))
    meter.fetch_seconds.observe(time.perf_counter() - start)
    if reason:
        log.warning(reason, "skipping %s: %s %s", key, reason, detail)
        return Fetched(key, None, reason)
    return size_guard(key, data, max_object_bytes, log)


@dataclass(frozen=True)
class EndlessRead:
    """One read task: draw a chunk of random keys, fetch it, yield blocks, for ever. Picklable.

    Keys come from the run's key owner named ``owner`` (``services.ingest.keys``: one listing
    per run, whatever the number of read tasks); with no owner (a read outside a Ray stream),
    from this process's own feed. Either way the bytes are fetched by this process's feed.

    Randomness comes from ``os.urandom`` where it is drawn, each time a task starts: Ray may
    ship the same pickled task again (an iterator rebuilt after an error), and it must draw new
    keys.
    """

    spec: FeedSpec
    chunk_images: int
    max_object_bytes: int
    block_bytes: int
    fetch_threads: int
    owner: str | None = None

    def key_chunks(self) -> Iterator[list[str]]:
        """Chunks of keys for ever: uniform with replacement, fresh from the live pool."""
        rng = random.Random()
        drawer = KeyDrawer(self.owner, self.spec) if self.owner is not None else None
        while True:
            try:
                if drawer is not None:
                    yield drawer.draw(self.chunk_images)
                else:
                    yield process_feed(self.spec).sample(self.chunk_images, rng)
            except FeedEmpty as exc:  # the store is down or empty: slow down, do not stop
                _log.error("feed-empty", "no keys to draw: %s", exc)
                time.sleep(EMPTY_FEED_PAUSE_S)

    def __call__(self) -> Iterator[pa.Table]:
        meter = IngestMetrics()

        def one(key: str) -> Fetched:
            fetched = fetch_object(process_feed(self.spec), key, self.max_object_bytes, meter)
            if fetched.reason == "vanished" and self.owner is not None:
                report_vanished(self.owner, key)  # out of the run's pool, as of this process's
            return fetched

        with ThreadPoolExecutor(self.fetch_threads, thread_name_prefix="seer-fetch") as pool:
            for keys in self.key_chunks():
                rows: list[Fetched] = []
                size = 0
                # map() keeps key order and overlaps fetches (S3 latency, not CPU, bounds them).
                for fetched in pool.map(one, keys):
                    rows.append(fetched)
                    size += len(fetched.data or b"")
                    if size >= self.block_bytes:  # small blocks: the guard rail against run-away
                        yield _table(rows)
                        rows, size = [], 0
                if rows:
                    yield _table(rows)


def _table(rows: list[Fetched]) -> pa.Table:
    return pa.Table.from_pydict({"key": [r.key for r in rows],
                                 "data": [r.data or b"" for r in rows],
                                 "reason": [r.reason or "" for r in rows]}, schema=READ_SCHEMA)


class EndlessDatasource(Datasource):
    """``read_tasks`` copies of one :class:`EndlessRead` (each draws its own keys)."""

    def __init__(self, read: EndlessRead, read_tasks: int) -> None:
        super().__init__()
        self.read, self.read_tasks = read, read_tasks

    def get_name(self) -> str:
        return "EndlessRandom"

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # unbounded

    def reads(self) -> list[EndlessRead]:
        return [self.read] * self.read_tasks

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: DataContext | None = None) -> list[ReadTask]:
        # `parallelism` is ignored on purpose: the number of read tasks is a config decision
        # (build_stream passes override_num_blocks=read_tasks so the two agree).
        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        return [ReadTask(read, meta, schema=READ_SCHEMA, per_task_row_limit=per_task_row_limit)
                for read in self.reads()]
