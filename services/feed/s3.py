"""S3-compatible object stores (AWS, MinIO, Ceph, GCS interop) through boto3: :class:`S3Access`,
a feed's way to a store (shared with the manifest feed), and :class:`S3Feed`, a bounded, moving
pool of keys from a bucket prefix that may hold a billion objects, never listed in full.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import botocore.exceptions

from services.feed.base import FeedClosed, FeedSpec, FetchFailed, ObjectTooLarge, ObjectVanished
from services.feed.keyspace import Coverage, Interval, KeyAlphabet, random_start
from services.feed.pooled import PooledFeed
from services.feed.requests import count_requests
from services.s3 import (
    LazyClient,
    RetryExhausted,
    RetryPolicy,
    attempts,
    body_chunks,
    call_with_retry,
    error_code,
    get_bytes,
    is_missing,
    make_client,
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


class S3Access:
    """A feed's way to a store: one lazily built client (services.s3), calls counted on the
    feed, errors mapped to the feed's (vanished, failed), never with secrets."""

    def __init__(self, spec: FeedSpec, feed: PooledFeed) -> None:
        self.spec = spec
        self.feed = feed
        self.policy = RetryPolicy(max_attempts=spec.max_attempts, budget_s=spec.retry_budget_s)
        self.client = LazyClient(lambda: count_requests(make_client(
            spec.resolved_endpoint(), max_attempts=spec.max_attempts, region=spec.region,
            read_timeout=spec.fetch_timeout_s, connect_timeout=min(spec.fetch_timeout_s, 10.0),
            what=f"feed {spec.uri}")))

    def call(self, fn: Callable[[], T]) -> T:
        """One call (botocore retries it), its retries counted."""
        try:
            result = fn()
        except botocore.exceptions.ClientError as exc:
            self.feed.count("retries", attempts(exc) - 1)
            raise
        self.feed.count("retries", attempts(result) - 1)
        return result

    def _on_retry(self, exc: BaseException, attempt: int, wait: float) -> None:
        self.feed.log.info("retry-read", "feed %s: read failed: %s, retrying in %.2fs",
                           self.spec.uri, error_code(exc), wait)

    def get(self, bucket: str, key: str, name: str, max_bytes: int | None = None) -> bytes:
        """The bytes of the object the caller knows as ``name``: ObjectVanished when missing,
        FetchFailed when the store gave no answer or refused, ObjectTooLarge over ``max_bytes``."""
        start = time.monotonic()
        try:
            data, sent = get_bytes(
                self.client(), bucket, key, self.policy, self.feed.jitter_rng, max_bytes=max_bytes,
                too_large=lambda size: ObjectTooLarge(name, size, max_bytes or 0),
                on_retry=self._on_retry, sleep=self.feed.sleep)
        except (ObjectTooLarge, FeedClosed):
            raise
        except RetryExhausted as exc:  # attempts: every request sent, botocore's or ours
            self.feed.count("retries", exc.attempts - 1)
            raise FetchFailed(name, error_code(exc.last), exc.attempts, exc.elapsed_s) from None
        except Exception as exc:
            if is_missing(exc):
                raise ObjectVanished(name) from None
            self.feed.count("retries", attempts(exc) - 1)
            raise FetchFailed(name, error_code(exc), attempts(exc),
                              time.monotonic() - start) from None
        self.feed.count("retries", sent - 1)  # every request after the first, botocore's or ours
        return data

    def list_page(self, bucket: str, prefix: str, start_after: str | None, max_keys: int) -> dict:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if start_after is not None:
            kwargs["StartAfter"] = start_after
        self.feed.count("listings")
        return self.call(lambda: self.client().list_objects_v2(**kwargs))

    def head(self, bucket: str, key: str) -> dict:
        return self.call(lambda: self.client().head_object(Bucket=bucket, Key=key))

    def download(self, bucket: str, key: str, path: str) -> None:
        """Streams an object to a local file (a failed body read restarts it, within budget)."""

        def attempt() -> None:
            body = self.call(lambda: self.client().get_object(Bucket=bucket, Key=key))["Body"]
            try:
                with open(path, "wb") as f:
                    for chunk in body_chunks(body):
                        self.feed.check_open()  # a manifest may be gigabytes
                        f.write(chunk)
            finally:
                body.close()

        call_with_retry(attempt, self.policy, self.feed.jitter_rng, on_retry=self._on_retry,
                        sleep=self.feed.sleep)

class S3Feed(PooledFeed):
    """A bucket prefix as a feed: a bounded pool of keys that moves through the key space.

    Each refresh cycle lists short runs (``chunk`` keys) from random start points
    (`keyspace.random_start`) until it has ``pool_size`` accepted keys or covered the key space;
    new keys push out those confirmed longest ago, so a large bucket's pool turns over each
    cycle. Deleted keys leave by a listed range without them, a fetch that finds them gone, or
    age. A bucket of at most ``pool_size`` keys is listed in full each cycle (a sweep).
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
        return self.s3.get(bucket, obj, name=key, max_bytes=max_bytes)

    def _close_resources(self) -> None:
        self.s3.client.close()

    # -- refresh ------------------------------------------------------------------------------
    def _refresh(self) -> None:
        pool_size = self.spec.pool_size
        listed: set[str] = set()  # every key listed this cycle (accepted or not)
        accepted: set[str] = set()
        intervals: list[Interval] = []
        sweep = bool(self._small)  # one run from the start of the key space to its end
        max_runs = 1 if sweep else 3 * math.ceil(pool_size / self.chunk) + 4
        start = None if sweep or self._alphabet.empty() else self._start_point()
        runs = 0
        while True:
            intervals += self._list_run(start, None if sweep else self.chunk, listed, accepted)
            runs += 1
            coverage = Coverage(intervals)
            if coverage.complete or len(accepted) >= pool_size or runs >= max_runs:
                break
            start = self._start_point()
        # Random runs that ran out before finding pool_size keys: almost surely a small bucket
        # (random runs in a large one rarely overlap); a sweep next cycle confirms or refutes it.
        self._small = (coverage.complete and len(accepted) <= pool_size) or (
            not sweep and len(accepted) < pool_size)
        self.forget(k for k in self._pool.snapshot() if k not in listed and k in coverage)

    def _start_point(self) -> str:
        return random_start(self.prefix, self._pool.random_key(self._rng), self._alphabet,
                            self._rng)

    def _list_run(self, start: str | None, quota: int | None, listed: set[str],
                  accepted: set[str]) -> list[Interval]:
        """Lists up to ``quota`` keys (None: to the end, or ``pool_size`` accepted this cycle)
        after ``start``, wrapping past the end once; pools accepted keys as pages arrive (the
        first sample does not wait for a cycle). Returns the ranges it listed."""
        intervals: list[Interval] = []
        lo = cursor = start
        wrapped = False
        n = 0
        while True:
            self.check_open()  # a cycle may be a thousand pages: close() must not wait for it
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
        self._count_keys(self._pool.add(good))
        self._alphabet.observe(k[len(self.prefix) :] for k in keys)
