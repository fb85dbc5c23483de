"""S3-compatible object stores (AWS, MinIO, Ceph, GCS interop) through boto3.

:class:`S3Access` is the retried, secret-free way to talk to a store (shared with the manifest
feed); :class:`S3Feed` keeps a bounded, moving pool of keys from a bucket prefix that may hold a
billion objects, without ever listing all of it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.config
from botocore import UNSIGNED

from services.feed.base import (
    FeedClosed,
    FeedSpec,
    FetchFailed,
    ObjectTooLarge,
    ObjectVanished,
    logger,
)
from services.feed.keyspace import Coverage, Interval, KeyAlphabet, random_start
from services.feed.pooled import PooledFeed
from services.feed.retry import (
    MISSING,
    TRANSIENT,
    RetryExhausted,
    RetryPolicy,
    call_with_retry,
    classify_s3_error,
    error_code,
)

T = TypeVar("T")

#: S3 returns at most 1000 keys per ListObjectsV2 page.
MAX_PAGE = 1000


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix``). The prefix is literal (S3
    semantics: ``s3://b/img`` also matches ``img2/x.jpg``; end it with ``/`` for a folder)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket[/key] URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


def make_s3_client(endpoint: str | None, *, region: str | None = None,
                   connect_timeout: float = 10.0, read_timeout: float = 60.0,
                   max_pool_connections: int = 32, what: str = "s3") -> Any:
    """A boto3 S3 client as every seer component wants one.

    botocore's own retries are cut to one attempt, so that the caller's `RetryPolicy` (time and
    attempt budget, full jitter) is the only one in force; requests go unsigned (public buckets)
    when the standard credential chain has nothing, said once in the log; a custom endpoint
    (MinIO, Ceph) gets path-style addressing, as those rarely have wildcard DNS for buckets.
    """
    session = boto3.session.Session(region_name=region)
    extra: dict[str, Any] = {}
    if session.get_credentials() is None:
        logger.info("%s: no AWS credentials found; using unsigned requests", what)
        extra["signature_version"] = UNSIGNED
    if endpoint:
        extra["s3"] = {"addressing_style": "path"}
    config = botocore.config.Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        **extra,
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


class S3Access:
    """One lazily built boto3 client plus our retry policy, bound to a feed's counters and log.

    botocore's own retries are turned down to a single attempt so that *our* budget (wall time
    and attempts, with full jitter) is the only one in force; see ``services.feed.retry``.
    Credentials come from boto3's standard chain; when the chain has none, requests go unsigned
    (public buckets), which is said once in the log.
    """

    def __init__(self, spec: FeedSpec, feed: PooledFeed) -> None:
        self.spec = spec
        self.feed = feed
        self.policy = RetryPolicy(max_attempts=spec.max_attempts, budget_s=spec.retry_budget_s)
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The boto3 S3 client, built on first use in this process (clients are thread-safe)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        return make_s3_client(
            self.spec.resolved_endpoint(),
            region=self.spec.region,
            connect_timeout=min(self.spec.fetch_timeout_s, 10.0),
            read_timeout=self.spec.fetch_timeout_s,
            max_pool_connections=32,
            what=f"feed {self.spec.uri}",
        )

    def call(self, what: str, fn: Callable[[], T]) -> tuple[T, int]:
        """Runs ``fn`` under the retry policy; returns (result, attempts).

        Raises :class:`RetryExhausted`, :class:`FeedClosed`, or the first non-transient error.
        """
        attempts = [1]

        def on_retry(exc: BaseException, attempt: int, wait: float) -> None:
            attempts[0] = attempt + 1
            self.feed._count("retries")
            self.feed.log.info(
                f"retry-{what}",
                "feed %s: %s: transient %s, retrying in %.2fs",
                self.spec.uri,
                what,
                error_code(exc),
                wait,
            )

        result = call_with_retry(
            fn,
            self.policy,
            self.feed._jitter_rng,
            lambda e: classify_s3_error(e) == TRANSIENT,
            on_retry=on_retry,
            sleep=self.feed._sleep,
        )
        return result, attempts[0]

    def get(self, bucket: str, key: str, name: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes. ObjectVanished when missing, FetchFailed when the budget is spent
        or the store refuses for good, ObjectTooLarge (body left unread) over ``max_bytes``.
        ``name`` is what the caller knows the object as."""
        feed = self.feed
        feed._count("fetches")
        start = time.monotonic()

        def attempt() -> bytes:
            response = self.client().get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                size = response.get("ContentLength")
                if max_bytes is not None and size is not None and size > max_bytes:
                    raise ObjectTooLarge(name, int(size), max_bytes)
                return body.read()  # a truncated body raises, and is retried
            finally:
                body.close()

        try:
            data, _ = self.call("get", attempt)
        except ObjectTooLarge:
            raise
        except RetryExhausted as exc:
            raise self._failed(name, error_code(exc.last), exc.attempts, start) from None
        except FeedClosed:
            raise self._failed(name, "closed", 1, start) from None
        except Exception as exc:
            if classify_s3_error(exc) == MISSING:
                feed._count("vanished")
                raise ObjectVanished(name) from None
            raise self._failed(name, error_code(exc), 1, start) from None
        feed._count("bytes_fetched", len(data))
        return data

    def _failed(self, name: str, reason: str, attempts: int, start: float) -> FetchFailed:
        self.feed._count("fetch_failures")
        err = FetchFailed(name, reason, attempts, time.monotonic() - start)
        self.feed.log.warning("fetch-failed", "feed %s: %s", self.spec.uri, err)
        return err

    def list_page(self, bucket: str, prefix: str, start_after: str | None, max_keys: int) -> dict:
        """One ListObjectsV2 page (retried)."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if start_after is not None:
            kwargs["StartAfter"] = start_after
        self.feed._count("listings")
        page, _ = self.call("list", lambda: self.client().list_objects_v2(**kwargs))
        return page

    def head(self, bucket: str, key: str) -> dict:
        """HeadObject (retried); a missing object raises the ClientError unchanged."""
        result, _ = self.call("head", lambda: self.client().head_object(Bucket=bucket, Key=key))
        return result

    def download(self, bucket: str, key: str, path: str) -> None:
        """Streams an object to a local file (retried as a whole)."""

        def attempt() -> None:
            body = self.client().get_object(Bucket=bucket, Key=key)["Body"]
            try:
                with open(path, "wb") as f:
                    for chunk in body.iter_chunks(1 << 20):
                        self.feed._check_open()  # a manifest may be gigabytes
                        f.write(chunk)
            finally:
                body.close()

        self.call("download", attempt)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


class S3Feed(PooledFeed):
    """A bucket prefix as a feed: a bounded pool of keys that moves through the key space.

    Each refresh cycle lists short runs of keys (``chunk`` keys each) from random start points
    (see :func:`services.feed.keyspace.random_start`) until it has seen ``pool_size`` accepted
    keys or covered the whole key space. New keys push out the keys confirmed longest ago, so the
    whole pool turns over each cycle in a large bucket. Deleted keys leave three ways: a listed
    range that no longer returns them, a fetch that finds them gone, or age. A bucket found to
    hold no more than ``pool_size`` keys is listed in full each cycle (a sweep), so its pool is
    exactly its contents.
    """

    def __init__(self, spec: FeedSpec) -> None:
        super().__init__(spec)
        self.bucket, self.prefix = parse_s3_uri(spec.uri)
        self.s3 = S3Access(spec, self)
        self.chunk = max(4, min(MAX_PAGE, spec.pool_size // 16))
        self._small: bool | None = None  # None until a cycle has told
        self._alphabet = KeyAlphabet()

    def _fetch(self, key: str, max_bytes: int | None) -> bytes:
        """Bytes of ``key`` (a key in this bucket, or a full ``s3://`` URI)."""
        bucket, obj = parse_s3_uri(key) if key.startswith("s3://") else (self.bucket, key)
        try:
            return self.s3.get(bucket, obj, name=key, max_bytes=max_bytes)
        except ObjectVanished:
            self._forget(key)
            raise

    def _close_resources(self) -> None:
        self.s3.close()

    # -- refresh ------------------------------------------------------------------------------
    def _refresh(self) -> None:
        pool_size = self.spec.pool_size
        listed: set[str] = set()  # every key listed this cycle (accepted or not)
        accepted: set[str] = set()
        intervals: list[Interval] = []
        if self._small:
            intervals += self._list_run(None, None, listed, accepted)
            coverage = Coverage(intervals)
            self._small = coverage.complete and len(accepted) <= pool_size
        else:
            max_runs = 3 * math.ceil(pool_size / self.chunk) + 4
            start = None if self._alphabet.empty() else self._start_point()
            runs = 0
            while True:
                intervals += self._list_run(start, self.chunk, listed, accepted)
                runs += 1
                coverage = Coverage(intervals)
                if coverage.complete or len(accepted) >= pool_size or runs >= max_runs:
                    break
                start = self._start_point()
            # Ran out of runs before finding pool_size keys: almost surely a small bucket (random
            # runs in a large one rarely overlap); a sweep next cycle confirms or refutes it.
            self._small = (coverage.complete and len(accepted) <= pool_size) or (
                len(accepted) < pool_size
            )
        gone = [k for k in self._pool.snapshot() if k not in listed and k in coverage]
        n = self._pool.discard_many(gone)
        self._count("keys_evicted", n)

    def _start_point(self) -> str:
        return random_start(
            self.prefix, self._pool.random_key(self._rng), self._alphabet, self._rng
        )

    def _list_run(
        self,
        start: str | None,
        quota: int | None,
        listed: set[str],
        accepted: set[str],
    ) -> list[Interval]:
        """Lists up to ``quota`` keys after ``start``, wrapping past the end of the key space
        once; adds accepted keys to the pool as pages arrive (so the first sample does not wait
        for a whole cycle). Returns the ranges it listed. ``quota`` None: until the end, or
        until ``pool_size`` keys were accepted this cycle."""
        intervals: list[Interval] = []
        lo = cursor = start
        wrapped = False
        n = 0
        while True:
            self._check_open()  # a cycle may be a thousand pages: close() must not wait for it
            page_size = MAX_PAGE if quota is None else max(1, min(MAX_PAGE, quota - n))
            page = self.s3.list_page(self.bucket, self.prefix, cursor, page_size)
            keys = [obj["Key"] for obj in page.get("Contents", ())]
            more = bool(page.get("IsTruncated")) and bool(keys)
            passed = False
            if wrapped and start is not None and keys and keys[-1] > start:
                keys = [k for k in keys if k <= start]  # back where this run began
                passed = True
            n += len(keys)
            self._take(keys, listed, accepted)
            if passed:
                intervals.append((lo, start))
                return intervals
            if not more:
                intervals.append((lo, None))
                # A start past the last key says nothing about where keys are: wrapping to the
                # first keys would over-sample them, so the caller draws another start instead.
                if wrapped or start is None or n == 0 or (quota is not None and n >= quota):
                    return intervals
                wrapped, lo, cursor = True, None, None
                continue
            cursor = keys[-1]
            if (quota is not None and n >= quota) or len(accepted) >= self.spec.pool_size:
                intervals.append((lo, cursor))
                return intervals

    def _take(self, keys: list[str], listed: set[str], accepted: set[str]) -> None:
        listed.update(keys)
        good = [k for k in keys if self.spec.accepts(k)]
        accepted.update(good)
        self._add_keys(good)
        self._alphabet.observe(k[len(self.prefix) :] for k in keys)
