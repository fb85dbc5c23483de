"""The ingest stage: fetch bytes → guards → decode + multi-crop → a batch of uint8 crops.

One job: turn keys into a batch. :func:`fetch_object` (keys → bytes, run by the stream's read
tasks) and :class:`Cropper` (bytes → uint8 crops, run by the ingest actors); ``services.stream``
only wires them into Ray. Keeping this free of Ray lets the benchmark and unit tests measure
and check exactly the code the actors run.

Every way an object can fail ends as one *reason* from :data:`REASONS`, counted in the
``seer_ingest_failures_total{reason=...}`` metric and logged at a rate limit — never as an
exception that stops the stream (DESIGN §3: bad input never stops training):

- ``vanished``: deleted between listing and fetch (the feed raised ObjectVanished);
- ``fetch_error``: the store did not answer within the feed's retry budget (FetchFailed), or any
  other error while fetching;
- ``too_large``: more bytes than ``ingest.max_object_bytes``, or a header declaring more pixels
  than ``augment.max_pixels`` (decompression bombs, checked before any pixel is decoded);
- ``too_small``: a side below ``augment.min_side`` (from the header);
- ``not_image``: zero bytes, text, an HTML error page saved as .jpg...;
- ``corrupt``: truncated or broken image data (and, defensively, any unexpected decoder error).

The pixel and side guards are applied by the decoder of ``seer_core.augment`` (from the header,
before decoding) with this config's limits; the byte-size guard is applied here, right after the
fetch, so an oversized object never travels further than the process that fetched it.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from seer_core.augment import ImageRejected, MultiCrop, build_multicrop, collate_crops
from seer_core.augment.recipes import MultiCropRecipe
from seer_core.config import FeedConfig, SeerConfig
from seer_core.training import photometric_params
from services import metrics
from services.feed import Feed, FeedSpec, FetchFailed, ObjectTooLarge, ObjectVanished, open_feed
from services.ratelimit import RateLimitedLogger

logger = logging.getLogger("seer.ingest")

#: Every reason an object can be skipped for; the ``reason`` label of the failure metric.
REASONS: tuple[str, ...] = (
    "vanished",
    "fetch_error",
    "too_large",
    "too_small",
    "not_image",
    "corrupt",
)

#: Decode + multi-crop of one image: ~2 ms (small PNG) to ~1 s (a 60 MP JPEG on a slow core).
DECODE_BOUNDARIES: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)
#: One fetch: ~1 ms (local file) up to the feed's retry budget (minutes) during an outage.
FETCH_BOUNDARIES: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)


def feed_spec(cfg: FeedConfig | SeerConfig) -> FeedSpec:
    """The picklable FeedSpec a config describes (what read tasks and workers open)."""
    feed = cfg.feed if isinstance(cfg, SeerConfig) else cfg
    return FeedSpec(
        uri=feed.uri,
        kind=feed.kind,
        endpoint_url=feed.endpoint_url,
        region=feed.region,
        pool_size=feed.pool_size,
        refresh_seconds=feed.refresh_seconds,
        idle_stop_s=feed.idle_stop_seconds,
        manifest_column=feed.manifest_column,
        manifest_base=feed.manifest_base,
        extensions=tuple(feed.extensions),
        fetch_timeout_s=feed.fetch_timeout_s,
        retry_budget_s=feed.retry_budget_s,
        max_attempts=feed.max_attempts,
    )


# One open feed per spec per process, on purpose: Ray reuses worker processes across read tasks,
# so the key pool (a million keys in the paper preset) and its background listing are paid once
# per process, not once per window. Closing the feed at the end of each read task would re-list
# the store for every window. Its lifetime is bounded instead (issue 9):
# - a feed nobody samples from parks its refresher after ``spec.idle_stop_s`` (the feed's own
#   rule, services.feed.pooled), so a process the stream stopped using stops listing;
# - asking for another spec closes the cached feeds of other specs that have no call in flight:
#   a Ray worker runs one task at a time, so a read task with a new spec means the old stream's
#   reads on this process are over (a busy feed, possible only with threads, is left alone);
# - a cached feed found closed (by a test, by hand) is replaced by a fresh one;
# - at interpreter exit the cached feeds are closed, so refresher threads stop and boto3
#   clients close before teardown rather than dying mid-request.
_FEEDS: dict[FeedSpec, Feed] = {}
_FEEDS_LOCK = threading.Lock()
#: How long interpreter exit waits for each feed's refresher (it is a daemon thread anyway).
EXIT_CLOSE_TIMEOUT_S = 5.0


def _is_closed(feed: Feed) -> bool:
    return bool(getattr(feed, "closed", False))


def _is_busy(feed: Feed) -> bool:
    calls = getattr(feed, "calls_in_flight", None)
    return bool(calls()) if callable(calls) else False


def process_feed(spec: FeedSpec) -> Feed:
    """The feed for ``spec`` shared by everything in this process (opened on first use).

    Callers use the returned feed for the task at hand and ask again for the next task (the
    call is a dictionary lookup): the feed of a spec no longer asked for may be closed.
    """
    stale: list[Feed] = []
    with _FEEDS_LOCK:
        feed = _FEEDS.get(spec)
        if feed is not None and not _is_closed(feed):
            return feed
        for other_spec, other in list(_FEEDS.items()):
            if other_spec != spec and (_is_closed(other) or not _is_busy(other)):
                stale.append(_FEEDS.pop(other_spec))
        feed = _FEEDS[spec] = open_feed(spec)
    # Outside the lock: closing joins a refresher thread, which may take a request's time.
    for old in stale:
        old.close()
    return feed


def close_process_feeds(timeout: float | None = None) -> None:
    """Closes the shared feeds of this process (tests; interpreter exit, via atexit).

    ``timeout`` bounds the wait for each refresher thread (default: the feed's own).
    """
    with _FEEDS_LOCK:
        feeds = list(_FEEDS.values())
        _FEEDS.clear()
    for feed in feeds:
        feed.close(timeout=timeout)


@atexit.register
def _close_process_feeds_at_exit() -> None:
    close_process_feeds(timeout=EXIT_CLOSE_TIMEOUT_S)


class IngestMetrics:
    """The ingest stage's metrics (declared at import; see ``services.metrics``)."""

    images = metrics.counter("seer_ingest_images_total", "images turned into multi-crop samples")
    bytes = metrics.counter("seer_ingest_bytes_total", "encoded bytes fetched from the feed")
    failures = metrics.counter(
        "seer_ingest_failures_total", "objects skipped, by reason", ("reason",))
    decode_seconds = metrics.histogram(
        "seer_ingest_decode_seconds", "decode + multi-crop time per image", DECODE_BOUNDARIES)
    fetch_seconds = metrics.histogram(
        "seer_ingest_fetch_seconds", "fetch time per object, retries included", FETCH_BOUNDARIES)


@dataclass(frozen=True)
class Fetched:
    """One object after the fetch and the byte-size guard: ``data`` or a ``reason``."""

    key: str
    data: bytes | None
    reason: str | None = None
    seconds: float = 0.0
    size: int = 0


def fetch_object(
    feed: Feed,
    key: str,
    max_object_bytes: int,
    *,
    meter: IngestMetrics | None = None,
    log: RateLimitedLogger | None = None,
) -> Fetched:
    """Fetches ``key`` and applies the byte-size guard; never raises for a bad object.

    Records bytes and fetch time on ``meter`` (where the fetch happens); failures are *not*
    counted here but carried as ``reason`` to the one place that counts them (the worker or the
    ingest actor), so every failure is counted exactly once.
    """
    start = time.perf_counter()
    reason: str | None = None
    data: bytes | None = None
    detail = ""
    try:
        data = feed.fetch(key, max_bytes=max_object_bytes)
    except ObjectTooLarge as exc:
        reason, detail = "too_large", f"{exc.size} bytes > {exc.limit}"
    except ObjectVanished:
        reason = "vanished"
    except FetchFailed as exc:
        reason, detail = "fetch_error", exc.reason
    except Exception as exc:  # a feed bug or an unforeseen client error: skip, never stop
        reason, detail = "fetch_error", type(exc).__name__
    seconds = time.perf_counter() - start
    size = len(data) if data is not None else 0
    if meter is not None:
        meter.fetch_seconds.observe(seconds)
        if size:
            meter.bytes.inc(size)
    if data is not None and size > max_object_bytes:
        reason, detail, data = "too_large", f"{size} bytes > {max_object_bytes}", None
    if reason is not None and log is not None:
        log.warning(reason, "skipping %s: %s %s", key, reason, detail)
    return Fetched(key, data, reason, seconds, size)


@dataclass
class IngestResult:
    """A collated batch of the images that made it, and what happened to the others.

    ``batch`` is the wire format: one uint8 tensor ``[B, count, 3, size, size]`` per crop group,
    keyed ``crops_<size>`` (``B`` may be 0 when every object failed). ``keys`` are the images in
    ``batch`` order; ``rejected`` the ``(key, reason)`` of the others.
    """

    batch: dict[str, torch.Tensor]
    keys: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failures(self) -> Counter[str]:
        return Counter(reason for _, reason in self.rejected)

    def numpy(self) -> dict[str, np.ndarray]:
        """The batch as numpy arrays (zero-copy), the form Ray Data blocks take."""
        return {k: v.numpy() for k, v in self.batch.items()}


def empty_batch(recipe: MultiCropRecipe) -> dict[str, torch.Tensor]:
    """A batch of zero images with the right per-group shapes (all objects failed)."""
    return {
        g.key: torch.empty((0, g.count, 3, g.size, g.size), dtype=torch.uint8)
        for g in recipe.groups
    }


class Cropper:
    """Guards → decode + multi-crop → collated batch, for objects already fetched. No Ray.

    What each ingest actor runs (``services.stream.IngestActor``); the benchmark and unit tests
    use it directly. Fetching happens before it, in the stream's read tasks (:func:`fetch_object`).
    Not thread-safe (one ``MultiCrop`` generator).
    """

    def __init__(
        self,
        cfg: SeerConfig,
        *,
        seed: int | None = None,
        log_interval_s: float = 30.0,
    ) -> None:
        self.cfg = cfg
        self.multicrop: MultiCrop = build_multicrop(
            cfg.augment.recipe,
            seed=seed,
            photometric=not cfg.augment.photometric_on_device,
            max_pixels=cfg.augment.max_pixels,
            min_side=cfg.augment.min_side,
            params=photometric_params(cfg),
            **cfg.augment.overrides(),
        )
        self.recipe: MultiCropRecipe = self.multicrop.recipe
        self.max_object_bytes = cfg.ingest.max_object_bytes
        self.meter = IngestMetrics()
        self.log = RateLimitedLogger(logger, log_interval_s)

    def crop(self, key: str, data: bytes) -> list[torch.Tensor] | str:
        """The crops of one image, or the reason it was rejected (counted and logged)."""
        start = time.perf_counter()
        try:
            crops = self.multicrop(data)
        except ImageRejected as exc:
            return self.reject(key, exc.reason, exc.detail)
        except Exception as exc:  # a decoder bug must not stop the stream: count it as corrupt
            if self.log.error("unexpected", "unexpected error decoding %s: %r", key, exc):
                logger.debug("traceback", exc_info=True)
            return self.reject(key, "corrupt", type(exc).__name__, log=False)
        self.meter.decode_seconds.observe(time.perf_counter() - start)
        return crops

    def reject(self, key: str, reason: str, detail: str = "", *, log: bool = True) -> str:
        """Counts one skipped object (metric) and logs it at the rate limit."""
        if reason not in REASONS:
            detail = f"{reason} {detail}".strip()
            reason = "corrupt"
        self.meter.failures.inc(1, {"reason": reason})
        if log:
            self.log.warning(reason, "skipping %s: %s %s", key, reason, detail)
        return reason

    # -- batches --------------------------------------------------------------------------------
    def process_fetched(
        self, items: Iterable[Fetched | tuple[str, bytes | None, str | None]]
    ) -> IngestResult:
        """Crops already fetched objects; items carrying a ``reason`` are counted and skipped."""
        samples: list[list[torch.Tensor]] = []
        keys: list[str] = []
        rejected: list[tuple[str, str]] = []
        for item in items:
            key, data, reason = (
                (item.key, item.data, item.reason) if isinstance(item, Fetched) else item
            )
            if reason:
                rejected.append((key, self.reject(key, reason, log=False)))
                continue
            if not data:
                rejected.append((key, self.reject(key, "not_image", "zero bytes")))
                continue
            out = self.crop(key, data)
            if isinstance(out, str):
                rejected.append((key, out))
                continue
            samples.append(out)
            keys.append(key)
        if samples:
            self.meter.images.inc(len(samples))
            batch = collate_crops(samples, self.recipe)
        else:
            batch = empty_batch(self.recipe)
        return IngestResult(batch, keys, rejected)

    def crop_rows(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """A read block's rows ``{key, data, reason}`` → numpy crop columns (``crops_<size>``:
        ``[n, count, 3, s, s]`` uint8)."""
        items = [
            (str(key), None if reason else bytes(data), str(reason) or None)
            for key, data, reason in zip(batch["key"], batch["data"], batch["reason"])
        ]
        return self.process_fetched(items).numpy()

    def process_bytes(
        self, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]]
    ) -> IngestResult:
        """Crops in-memory objects (benchmark, tests): the byte-size guard, then decode + crop."""
        pairs = items.items() if isinstance(items, Mapping) else items
        fetched = []
        for key, data in pairs:
            if len(data) > self.max_object_bytes:
                self.log.warning("too_large", "skipping %s: too_large %d bytes", key, len(data))
                fetched.append(Fetched(key, None, "too_large", size=len(data)))
            else:
                fetched.append(Fetched(key, data, None, size=len(data)))
        return self.process_fetched(fetched)

