"""The feed interface: the spec that travels, the protocol the ingest stage codes against, and the
machinery the three sources share (a bounded pool filled by a background refresher).

Design constraints that shape this module:
- A :class:`FeedSpec` crosses process boundaries (Ray read tasks, actors), so it is a frozen,
  picklable value; the live :class:`Feed` (threads, sockets) is opened in each process.
- The refresher thread starts on first use, not in the constructor, so opening a feed is cheap
  and a process that only fetches never lists.
- The refresher must survive anything the store does: it logs at a rate limit, backs off and
  tries again, for ever; the pool keeps its last good contents meanwhile.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from services.feed.pool import KeyPool
from services.ratelimit import RateLimitedLogger

logger = logging.getLogger("seer.feed")

KINDS: tuple[str, ...] = ("auto", "directory", "s3", "manifest")
MANIFEST_SUFFIXES: tuple[str, ...] = (".parquet", ".txt", ".csv")
DEFAULT_IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
)


class FeedError(Exception):
    """Base of every error a feed raises on purpose."""


class FeedEmpty(FeedError):
    """No key became available within the wait: the source is empty, unreachable or misnamed."""


class ObjectVanished(FeedError):
    """The sampled object no longer exists (deleted after it was listed). Skip it."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object vanished: {key}")
        self.key = key


class FetchFailed(FeedError):
    """The object could not be read within the retry budget, or the store refused it for good.

    ``reason`` is a short code (``"SlowDown"``, ``"EndpointConnectionError"``, ``"AccessDenied"``)
    fit for a metric label; the message never carries credentials or signed URLs.
    """

    def __init__(self, key: str, reason: str, attempts: int, elapsed_s: float) -> None:
        super().__init__(
            f"fetch failed: {key}: {reason} after {attempts} attempt(s) in {elapsed_s:.1f}s"
        )
        self.key = key
        self.reason = reason
        self.attempts = attempts
        self.elapsed_s = elapsed_s


def _normalise_extensions(exts: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for ext in exts:
        if not isinstance(ext, str) or not ext.strip(".").strip():
            raise ValueError(f"extensions: each entry must be a non-empty string, got {ext!r}")
        e = ext.strip().lower()
        out.append(e if e.startswith(".") else "." + e)
    return tuple(dict.fromkeys(out))


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True)
class FeedSpec:
    """Where images come from, and how hard to try. Picklable; ``open()`` in each process.

    ``kind="auto"`` picks: a URI whose path ends in ``.parquet``/``.txt``/``.csv`` is a manifest
    (local or ``s3://``), another ``s3://`` URI is a bucket prefix, anything else a directory.
    ``endpoint_url`` falls back to ``$AWS_ENDPOINT_URL`` then ``$SEER_S3_ENDPOINT_URL`` at open
    time (in the process that opens). Credentials are never part of a spec: boto3's standard chain
    supplies them. ``seed`` fixes the refresher's randomness (tests); leave it None in production
    so processes do not all list the same key ranges.
    """

    uri: str
    kind: str = "auto"
    endpoint_url: str | None = None
    region: str | None = None
    pool_size: int = 100_000
    refresh_seconds: float = 300.0
    manifest_column: str = "key"
    manifest_base: str | None = None
    extensions: tuple[str, ...] = DEFAULT_IMAGE_EXTENSIONS
    fetch_timeout_s: float = 30.0
    retry_budget_s: float = 120.0
    max_attempts: int = 8
    seed: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _require(
            isinstance(self.uri, str) and bool(self.uri.strip()),
            f"uri: must be a non-empty string, got {self.uri!r}",
        )
        _require(
            self.kind in KINDS,
            f"kind: must be one of {', '.join(KINDS)}; got {self.kind!r}",
        )
        if self.kind == "s3":
            _require(self.uri.startswith("s3://"), f"uri: kind 's3' needs s3://bucket[/prefix], "
                     f"got {self.uri!r}")
        if self.kind == "directory":
            _require(not self.uri.startswith("s3://"), "uri: kind 'directory' needs a local path "
                     f"or file:// URI, got {self.uri!r}")
        if self.uri.startswith("s3://"):
            _require(bool(urlsplit(self.uri).netloc), f"uri: no bucket in {self.uri!r}")
        if self.endpoint_url is not None:
            _require(isinstance(self.endpoint_url, str) and self.endpoint_url.startswith(
                ("http://", "https://")), "endpoint_url: must be an http:// or https:// URL")
            # Never echo the value: a URL with user:password@ is exactly what must not leak.
            _require("@" not in (urlsplit(self.endpoint_url).netloc or ""),
                     "endpoint_url: must not carry credentials (user:password@); "
                     "credentials come from the AWS credential chain only")
        _require(isinstance(self.pool_size, int) and not isinstance(self.pool_size, bool)
                 and self.pool_size >= 1, f"pool_size: must be an int >= 1, got {self.pool_size!r}")
        for name in ("refresh_seconds", "fetch_timeout_s"):
            value = getattr(self, name)
            _require(isinstance(value, int | float) and not isinstance(value, bool) and value > 0,
                     f"{name}: must be a number > 0, got {value!r}")
        _require(isinstance(self.retry_budget_s, int | float) and self.retry_budget_s >= 0,
                 f"retry_budget_s: must be a number >= 0, got {self.retry_budget_s!r}")
        _require(isinstance(self.max_attempts, int) and not isinstance(self.max_attempts, bool)
                 and self.max_attempts >= 1,
                 f"max_attempts: must be an int >= 1, got {self.max_attempts!r}")
        _require(isinstance(self.manifest_column, str) and bool(self.manifest_column),
                 f"manifest_column: must be a non-empty string, got {self.manifest_column!r}")
        if isinstance(self.extensions, str):
            raise ValueError("extensions: must be a tuple of strings such as ('.jpg', '.png'), "
                             f"not the string {self.extensions!r}")
        # YAML hands over lists and mixed case; normalise so equality and pickling stay simple.
        object.__setattr__(self, "extensions", _normalise_extensions(self.extensions))

    def resolved_kind(self) -> str:
        """The concrete kind ``auto`` stands for (see the class docstring)."""
        if self.kind != "auto":
            return self.kind
        path = urlsplit(self.uri).path if "://" in self.uri else self.uri
        if path.lower().endswith(MANIFEST_SUFFIXES):
            return "manifest"
        if self.uri.startswith("s3://"):
            return "s3"
        return "directory"

    def resolved_endpoint(self) -> str | None:
        """The endpoint to use in this process: the spec's, else the environment's."""
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL")
            or os.environ.get("SEER_S3_ENDPOINT_URL")
            or None
        )

    def accepts(self, name: str) -> bool:
        """Whether a key or path has one of the wanted extensions (any, when none are set)."""
        if name.endswith("/"):
            return False  # "directory" marker objects
        return not self.extensions or name.lower().endswith(self.extensions)

    def open(self) -> Feed:
        """Opens the live feed in this process (no I/O until first use)."""
        kind = self.resolved_kind()
        if kind == "s3":
            from services.feed.s3 import S3Feed

            return S3Feed(self)
        if kind == "manifest":
            from services.feed.manifest import ManifestFeed

            return ManifestFeed(self)
        from services.feed.directory import DirectoryFeed

        return DirectoryFeed(self)


@runtime_checkable
class Feed(Protocol):
    """What the ingest stage needs from a source of images. All methods are thread-safe."""

    def sample(self, n: int, rng: random.Random) -> list[str]:
        """``n`` keys, uniform with replacement; blocks until the pool has a key, else FeedEmpty."""
        ...

    def fetch(self, key: str) -> bytes:
        """The object's bytes; ObjectVanished if gone, FetchFailed after the retry budget."""
        ...

    def pool_size(self) -> int:
        """Keys in the pool now."""
        ...

    def _set(self, name: str, value: float) -> None:
        """Sets a gauge (e.g. ``source_objects``, the size of the last full read)."""
        with self._counts_lock:
            self._counts[name] = value

    def stats(self) -> dict[str, float]:
        """Monotonic counters (and the pool size) for metrics."""
        ...

    def close(self) -> None:
        """Stops the refresher and releases connections. Idempotent."""
        ...


def open_feed(uri_or_spec: str | FeedSpec, **kwargs: Any) -> Feed:
    """Opens a feed from a URI plus FeedSpec fields, or from a ready spec (with overrides)."""
    if isinstance(uri_or_spec, FeedSpec):
        spec = uri_or_spec
        if kwargs:
            from dataclasses import replace

            spec = replace(spec, **kwargs)
    else:
        spec = FeedSpec(uri=uri_or_spec, **kwargs)
    return spec.open()


class FeedClosed(FeedError):
    """Raised inside a feed's own waits once ``close()`` was called."""


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

    def fetch(self, key: str) -> bytes:
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
