"""The machinery the three feeds share: a bounded pool filled by a background refresher.

The refresher thread starts on first use, not in the constructor, so opening a feed is cheap and
a process that only fetches never lists. It must survive anything the store does: it logs at a
rate limit, backs off and tries again, for ever; the pool keeps its last good contents meanwhile.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable

from services.feed.base import FeedClosed, FeedEmpty, FeedError, FeedSpec, logger
from services.feed.pool import KeyPool
from services.ratelimit import RateLimitedLogger


class PooledFeed:
    """Shared body of the three feeds: the pool, the refresher thread, counters and waits.

    Subclasses implement ``_refresh()`` (one refresh cycle; raise on failure) and ``fetch()``.
    """

    #: Counters reported by ``stats()``; subclasses may add more through ``_count``.
    COUNTERS: tuple[str, ...] = (
        "listings",
        "refreshes",
        "refresh_errors",
        "retries",
        "fetches",
        "fetch_failures",
        "vanished",
        "bytes_fetched",
        "keys_added",
        "keys_evicted",
    )

    def __init__(self, spec: FeedSpec, log_interval_s: float = 30.0) -> None:
        self.spec = spec
        self._pool = KeyPool(spec.pool_size)
        self._rng = random.Random(spec.seed)  # refresher only: one thread uses it
        self._jitter_rng = random.Random(None if spec.seed is None else spec.seed + 1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self._counts: dict[str, float] = dict.fromkeys(self.COUNTERS, 0)
        self._last_error: str | None = None
        self._refreshed_once = threading.Event()
        self.log = RateLimitedLogger(logger, log_interval_s)

    # -- bookkeeping --------------------------------------------------------------------------
    def _count(self, name: str, n: float = 1) -> None:
        with self._counts_lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def _set(self, name: str, value: float) -> None:
        """Sets a gauge (e.g. ``source_objects``, the size of the last full read)."""
        with self._counts_lock:
            self._counts[name] = value

    def stats(self) -> dict[str, float]:
        """Counters since open, plus ``pool_size`` (a gauge)."""
        with self._counts_lock:
            out = dict(self._counts)
        out["pool_size"] = len(self._pool)
        return out

    def describe(self) -> str:
        """Where this feed reads from, for messages (URIs never hold credentials)."""
        return self.spec.uri

    def _add_keys(self, keys: Iterable[str]) -> None:
        added, evicted = self._pool.add(keys)
        self._count("keys_added", added)
        self._count("keys_evicted", evicted)

    def _replace_keys(self, keys: Iterable[str]) -> None:
        added, removed = self._pool.replace(keys)
        self._count("keys_added", added)
        self._count("keys_evicted", removed)

    def _forget(self, key: str) -> None:
        """Drops a key found missing so it is not sampled again before the next refresh."""
        if self._pool.discard(key):
            self._count("keys_evicted")

    def _sleep(self, seconds: float) -> None:
        """A sleep that ``close()`` interrupts (raises FeedClosed)."""
        if self._stop.wait(seconds):
            raise FeedClosed(f"feed {self.describe()} closed")

    # -- the refresher ------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                t = threading.Thread(
                    target=self._run, name=f"seer-feed-refresh[{self.describe()}]", daemon=True
                )
                t.start()
                self._thread = t

    def _refresh(self) -> None:
        raise NotImplementedError

    def refresh_now(self) -> None:
        """Runs one refresh cycle in the calling thread (tests, and a CLI 'check' command)."""
        self._refresh()
        self._count("refreshes")

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._refresh()
            except FeedClosed:
                return
            except Exception as exc:
                # Never let the thread die: an outage only means the pool is not refreshed.
                failures += 1
                self._count("refresh_errors")
                self._last_error = _short_error(exc)
                self.log.warning(
                    "refresh-error",
                    "feed %s: refresh failed (%s); keeping %d pooled keys, retrying",
                    self.describe(),
                    self._last_error,
                    len(self._pool),
                )
                self._refreshed_once.set()
                cap = min(self.spec.refresh_seconds, 30.0)
                wait = self._jitter_rng.uniform(0.5, 1.0) * min(cap, 0.25 * 2 ** min(failures, 16))
                self._stop.wait(wait)
                continue
            failures = 0
            self._last_error = None
            self._count("refreshes")
            self._refreshed_once.set()
            self._stop.wait(self.spec.refresh_seconds)

    # -- the Feed interface -------------------------------------------------------------------
    def sample(self, n: int, rng: random.Random, timeout: float | None = None) -> list[str]:
        """``n`` keys drawn uniformly with replacement from the pool.

        Blocks until the pool has a key, for at most ``timeout`` seconds (default: the spec's
        ``retry_budget_s``, at least 1 s), then raises FeedEmpty saying why if it can tell.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n!r}")
        self._ensure_started()
        wait = max(1.0, self.spec.retry_budget_s) if timeout is None else timeout
        deadline = time.monotonic() + wait
        pool = self._pool
        with pool.nonempty:
            while not pool._keys:
                if self._stop.is_set():
                    raise FeedClosed(f"feed {self.describe()} closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FeedEmpty(self._empty_message(wait))
                pool.nonempty.wait(min(left, 0.25))
            return rng.choices(pool._keys, k=n)

    def _empty_message(self, waited: float) -> str:
        if self._last_error:
            why = f"last refresh failed: {self._last_error}"
        elif not self._refreshed_once.is_set():
            why = "the first listing has not finished yet"
        else:
            why = "the source lists no matching objects"
            if self.spec.extensions:
                why += f" (extensions {', '.join(self.spec.extensions)})"
        return f"feed {self.describe()}: no keys after {waited:.1f}s; {why}"

    def pool_size(self) -> int:
        """Keys in the pool now (starts the refresher, so polling it makes progress)."""
        self._ensure_started()
        return len(self._pool)

    def pooled_keys(self) -> list[str]:
        """A snapshot of the pool (tests, debugging); like ``pool_size`` it starts the refresher."""
        self._ensure_started()
        return self._pool.snapshot()

    def fetch(self, key: str, max_bytes: int | None = None) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Stops the refresher (waiting briefly for it) and releases resources. Idempotent."""
        self._stop.set()
        with self._pool.nonempty:
            self._pool.nonempty.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=10.0)
        self._close_resources()

    def _close_resources(self) -> None:
        """Subclasses release clients here."""

    def __enter__(self) -> PooledFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short_error(exc: BaseException) -> str:
    """A one-line description of an error that cannot leak secrets.

    botocore messages can contain endpoint URLs (fine: they may not hold credentials) but never
    keys; still, keep to the error code and a bounded message.
    """
    from services.feed.retry import error_code

    code = error_code(exc)
    if isinstance(exc, FeedError | OSError | ValueError | KeyError):
        return f"{code}: {str(exc)[:300]}"
    return code
