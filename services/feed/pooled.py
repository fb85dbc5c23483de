"""The machinery the three feeds share: a bounded key pool filled by a background refresher.

The refresher starts on first use, not in the constructor, so opening a feed is cheap and a
process that only fetches never lists. It survives anything the store does: it logs at a rate
limit, backs off and tries again for as long as the feed is open and used; the pool keeps its
last good contents meanwhile. Because a refresher lists up to ``pool_size`` keys (a million in
the paper preset) every cycle, in every process that ever sampled (issue 9):
- ``close()`` ends it within one page of a listing: every refresh calls ``check_open()``
  between pages;
- a feed nobody used for ``spec.idle_stop_s`` *parks* it (the thread ends, the pool stays); the
  next ``sample`` starts it again, so a Ray worker the stream no longer uses stops listing;
- one refresh cycle runs at a time (``refresh_now`` and the refresher share a lock): a cycle's
  state (the S3 key-space model, the manifest version, ``_rng``) is not safe to share.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterable, Iterator

from services.feed.base import (
    FeedClosed,
    FeedEmpty,
    FeedError,
    FeedSpec,
    FetchFailed,
    ObjectVanished,
    logger,
)
from services.feed.pool import KeyPool
from services.ratelimit import RateLimitedLogger
from services.s3 import error_code


class PooledFeed:
    """The feed interface the ingest stage codes against (thread-safe), and the body the three
    feeds share: the pool, the refresher thread, counters and waits.

    Subclasses implement ``_refresh()`` (one cycle; raise on failure; call ``check_open()``
    between pages) and ``_fetch()``. ``count``, ``sleep``, ``check_open`` and ``jitter_rng`` are
    public: the fetch helpers of the concrete feeds (``feed.s3``, ``feed.directory``) use them.
    """

    #: Counters ``stats()`` reports from 0; ``count`` may add more.
    COUNTERS = ("listings", "refreshes", "refresh_errors", "retries", "fetches", "fetch_failures",
                "vanished", "bytes_fetched", "keys_added", "keys_evicted", "refresher_parks")
    #: How long close() waits for the refresher beyond the spec's fetch timeout (it notices the
    #: close between pages, so the wait is one request in flight at most).
    CLOSE_GRACE_S = 10.0

    def __init__(self, spec: FeedSpec) -> None:
        self.spec = spec
        self._pool = KeyPool(spec.pool_size)
        self._rng = random.Random()  # refresh cycles only (one at a time: _refresh_lock)
        self.jitter_rng = random.Random()
        self._stop = threading.Event()
        # Refresher threads started and maybe still running (close() joins them all: after a
        # park and a restart the parked one may still be returning), and the one in charge
        # (None: not started, parked or ended); both under _start_lock.
        self._threads: list[threading.Thread] = []
        self._active: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        # Use tracking: for parking an idle refresher and for ingest's process_feed eviction.
        self._use_lock = threading.Lock()
        self._calls = 0
        self._last_used = time.monotonic()
        self._counts_lock = threading.Lock()
        self._counts: dict[str, float] = dict.fromkeys(self.COUNTERS, 0)
        self._last_error: str | None = None
        self._refreshed_once = threading.Event()
        self.log = RateLimitedLogger(logger, 30.0)

    # -- bookkeeping --------------------------------------------------------------------------
    def count(self, name: str, n: float = 1) -> None:
        with self._counts_lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def _set(self, name: str, value: float) -> None:
        """Sets a gauge (e.g. ``source_objects``, the size of the last full read)."""
        with self._counts_lock:
            self._counts[name] = value

    def stats(self) -> dict[str, float]:
        """Monotonic counters since open (for metrics), plus ``pool_size`` (a gauge)."""
        with self._counts_lock:
            counts = dict(self._counts)
        return {**counts, "pool_size": len(self._pool)}

    def _count_keys(self, added_evicted: tuple[int, int]) -> None:
        self.count("keys_added", added_evicted[0])
        self.count("keys_evicted", added_evicted[1])

    def sleep(self, seconds: float) -> None:
        """A sleep that ``close()`` interrupts (raises FeedClosed)."""
        if self._stop.wait(seconds):
            self.check_open()

    def check_open(self) -> None:
        if self._stop.is_set():
            raise FeedClosed(f"feed {self.spec.uri} closed")

    # -- use tracking -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        """Marks a sample or fetch in flight: such a feed is neither idle nor evictable."""
        with self._use_lock:
            self._calls += 1
            self._last_used = time.monotonic()
        try:
            yield
        finally:
            with self._use_lock:
                self._calls -= 1
                self._last_used = time.monotonic()

    def calls_in_flight(self) -> int:
        """Samples and fetches running now (``process_feed`` never closes a feed with some)."""
        with self._use_lock:
            return self._calls

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (a closed feed is not reopened: open a new one)."""
        return self._stop.is_set()

    # -- the refresher ------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        # Always under the lock (cheap next to a sample): a refresher deciding to park and a
        # caller needing it must not both think the other one will run.
        with self._start_lock:
            with self._use_lock:
                self._last_used = time.monotonic()
            if self._active is not None or self._stop.is_set():
                return
            self._threads = [t for t in self._threads if t.is_alive()]
            self._active = threading.Thread(
                target=self._run, name=f"seer-feed-refresh[{self.spec.uri}]", daemon=True)
            self._threads.append(self._active)
            self._active.start()

    def _park_if_idle(self) -> bool:
        """Ends the refresher when nobody used the feed for ``idle_stop_s``; True if it did."""
        with self._start_lock, self._use_lock:
            idle = 0.0 if self._calls else time.monotonic() - self._last_used
            if idle < self.spec.idle_stop_s:
                return False
            self._active = None
        self.count("refresher_parks")
        self.log.info("parked", "feed %s: unused for %.0fs; refresher paused until the next "
                      "sample", self.spec.uri, idle)
        return True

    def _refresh(self) -> None:
        raise NotImplementedError

    def _lock_refresh(self) -> bool:
        """Takes the refresh lock for the background refresher; False once the feed closed.
        Polls, so that a refresher queued behind a long ``refresh_now`` still ends on close()."""
        while not self._refresh_lock.acquire(timeout=0.1):
            if self._stop.is_set():
                return False
        if self._stop.is_set():
            self._refresh_lock.release()
            return False
        return True

    def refresh_now(self) -> None:
        """Runs one refresh cycle in the calling thread, after any cycle the background
        refresher is running. FeedClosed on a closed feed."""
        with self._refresh_lock:
            self.check_open()
            self._refresh()
        self.count("refreshes")

    def _run(self) -> None:
        failures = 0
        try:
            while self._lock_refresh():
                try:
                    self._refresh()
                except FeedClosed:
                    return
                except Exception as exc:  # an outage only means the pool is not refreshed
                    failures += 1
                    # The error first: whoever sees the count must find the reason.
                    self._last_error = _short_error(exc)
                    self.count("refresh_errors")
                    self.log.warning("refresh-error", "feed %s: refresh failed (%s); keeping %d "
                                     "pooled keys, retrying", self.spec.uri, self._last_error,
                                     len(self._pool))
                    cap = min(self.spec.refresh_seconds, 30.0, 0.25 * 2 ** min(failures, 16))
                    wait = self.jitter_rng.uniform(0.5, 1.0) * cap
                else:
                    failures = 0
                    self._last_error = None
                    self.count("refreshes")
                    wait = self.spec.refresh_seconds
                finally:
                    self._refresh_lock.release()
                self._refreshed_once.set()
                if self._stop.wait(wait) or self._park_if_idle():
                    return
        finally:
            # Whatever ended this thread, the next use may start another one.
            with self._start_lock:
                if self._active is threading.current_thread():
                    self._active = None

    # -- the Feed interface -------------------------------------------------------------------
    def sample(self, n: int, rng: random.Random, timeout: float | None = None) -> list[str]:
        """``n`` keys drawn uniformly with replacement from the pool, once it has a key: waits
        at most ``timeout`` seconds (default: ``retry_budget_s``, at least 1 s), then FeedEmpty
        saying why if it can tell."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n!r}")
        with self._in_use():
            self._ensure_started()
            wait = max(1.0, self.spec.retry_budget_s) if timeout is None else timeout
            deadline = time.monotonic() + wait
            poll = 0.0
            while (keys := self._pool.wait_sample(n, rng, poll)) is None:
                self.check_open()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FeedEmpty(self._empty_message(wait))
                poll = min(left, 0.25)
            return keys

    def _empty_message(self, waited: float) -> str:
        if self._last_error:
            why = f"last refresh failed: {self._last_error}"
        elif not self._refreshed_once.is_set():
            why = "the first listing has not finished yet"
        else:
            why = "the source lists no matching objects"
            if self.spec.extensions:
                why += f" (extensions {', '.join(self.spec.extensions)})"
        return f"feed {self.spec.uri}: no keys after {waited:.1f}s; {why}"

    def pool_size(self) -> int:
        """Keys in the pool now (starts the refresher, so polling it makes progress)."""
        self._ensure_started()
        return len(self._pool)

    def forget(self, keys: Iterable[str]) -> None:
        """Drops keys found vanished (here or, for a run's key owner, by a read task that
        fetched them) from the pool, so they are not sampled again before the next refresh."""
        self.count("keys_evicted", self._pool.discard_many(keys))

    def fetch(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes: ObjectVanished if gone, FetchFailed after the retries,
        ObjectTooLarge (without reading it) when it holds more than ``max_bytes``. The one place
        every feed's fetches are counted and their failures logged; a vanished key leaves the
        pool, so that it is not sampled again before the next refresh."""
        self.count("fetches")
        start = time.monotonic()
        try:
            with self._in_use():
                data = self._fetch(key, max_bytes)
        except ObjectVanished:
            self.count("vanished")
            self.forget((key,))
            raise
        except (FetchFailed, FeedClosed) as exc:  # closed: a retry's sleep was cut short
            failed = exc if isinstance(exc, FetchFailed) else FetchFailed(
                key, "closed", 1, time.monotonic() - start)
            self.count("fetch_failures")
            self.log.warning("fetch-failed", "feed %s: %s", self.spec.uri, failed)
            raise failed from None
        self.count("bytes_fetched", len(data))
        return data

    def _fetch(self, key: str, max_bytes: int | None) -> bytes:
        raise NotImplementedError

    def close(self, timeout: float | None = None) -> None:
        """Stops the refresher, waits for its thread (default: the spec's fetch timeout plus
        ``CLOSE_GRACE_S``; one still alive, on a store that never answers, is a logged daemon),
        releases resources. Idempotent."""
        self._stop.set()
        with self._pool.nonempty:
            self._pool.nonempty.notify_all()
        wait = self.spec.fetch_timeout_s + self.CLOSE_GRACE_S if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._start_lock:
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            logger.warning("feed %s: refresher still running %.0fs after close (a request in "
                           "flight)", self.spec.uri, wait)
        self._close_resources()

    def _close_resources(self) -> None:
        """Subclasses release clients here."""

    def __enter__(self) -> PooledFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short_error(exc: BaseException) -> str:
    """A one-line description of an error that cannot leak secrets: the error code and, for
    seer's own and OS errors, a bounded message (botocore's may name endpoints, never keys)."""
    code = error_code(exc)
    if isinstance(exc, FeedError | OSError | ValueError | KeyError):
        return f"{code}: {str(exc)[:300]}"
    return code
