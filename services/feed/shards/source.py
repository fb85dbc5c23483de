"""The store side of the shard feed: the shard list of a ``feed.uri`` and the opener of a shard,
local or on S3, for one read task's :class:`~services.feed.shards.visit.ShardVisitor`.

What a URI lists (``FeedSpec`` decides when ``auto`` means shards):

- a brace pattern (``.../{00000..41455}.tar``): its names. On S3 they are the list, with no
  LIST at all (a shard that is not there is found by its GET, counted ``vanished`` and left out
  until the next refresh); locally, the names that exist as files.
- a glob in the last segment (``prefix/*.tar``, ``prefix/part-*.parquet``): the matching files
  (``glob``), or the keys ListObjectsV2 finds under the literal part (``*`` does not cross a ``/``).
- one shard (``.../00000.tar``; a ``.parquet`` only with ``kind: shards``): itself.
- with ``kind: shards``, a ``.txt`` file (local or S3): one shard URI or brace pattern a line
  (``#`` comments), relative ones against the list's folder; anything else is a folder or prefix,
  whose shards (``.tar``, ``.tar.gz``, ``.tgz``, ``.parquet``, at any depth) are the list.

Listings are made again every ``feed.refresh_seconds`` (every few seconds while the list is
empty), in the read task that asks, so new shards are drawn from the next refresh on; a listing
that fails keeps the last list. Every S3 client is wrapped in ``count_requests``
(``seer_feed_requests_total{op}``). Opening: a tar is the streaming body of one GET (its
members are read as they arrive); a Parquet table is one HEAD for its size, then ranged GETs
through a :class:`~services.feed.shards.ranged.RangedReader`. Store errors map to the feed's:
ObjectVanished (gone since listed), FetchFailed (no answer within the retry budget).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import posixpath
import random
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from services.feed.base import FeedSpec, FetchFailed, ObjectVanished
from services.feed.requests import count_requests
from services.feed.s3 import MAX_PAGE, parse_s3_uri
from services.feed.shards.names import expand_shard_pattern
from services.feed.shards.ranged import RangedReader
from services.feed.shards.readers import PARQUET_SUFFIXES, TAR_SUFFIXES, ShardFile, shard_format
from services.ratelimit import RateLimitedLogger
from services.s3 import (
    LazyClient,
    RetryExhausted,
    RetryPolicy,
    attempts,
    body_chunks,
    call_with_retry,
    error_code,
    is_missing,
    is_transient,
    make_client,
)

T = TypeVar("T")
log = RateLimitedLogger(logging.getLogger("seer.feed.shards"), 30.0)

SHARD_SUFFIXES = TAR_SUFFIXES + PARQUET_SUFFIXES
_BRACE = re.compile(r"\{[^{}]*\}")
#: How often an empty list is made again (a bucket being seeded should not wait a full refresh).
EMPTY_REFRESH_S = 5.0


class ShardSource:
    """The shard list and opener of one spec, in one process. Not thread-safe (one read task).

    :meth:`names` is the visitor's ``shards`` callable, :meth:`open` its ``opener``.
    """

    def __init__(self, spec: FeedSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec, self.clock = spec, clock
        self.s3 = spec.uri.startswith("s3://")
        self.policy = RetryPolicy(max_attempts=spec.max_attempts, budget_s=spec.retry_budget_s)
        self.jitter = random.Random()
        self.client = LazyClient(lambda: count_requests(make_client(
            spec.resolved_endpoint(), max_attempts=spec.max_attempts, region=spec.region,
            read_timeout=spec.fetch_timeout_s, connect_timeout=min(spec.fetch_timeout_s, 10.0),
            what=f"feed {spec.uri}")))
        self.listed: list[str] = []
        self.gone: set[str] = set()  # found vanished since the last listing
        self.listings = 0
        self._listed_at: float | None = None
        self._current: list[str] = []

    # -- listing --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """The current shard list (refreshed when due), without shards found vanished."""
        now = self.clock()
        wait = self.spec.refresh_seconds if self.listed else min(self.spec.refresh_seconds,
                                                                 EMPTY_REFRESH_S)
        if self._listed_at is None or now - self._listed_at >= wait:
            self._listed_at = now
            try:
                self.listed = sorted(set(self.list_shards()))
            except Exception as exc:  # a store outage keeps the last list: the stream goes on
                log.warning("list-failed", "shard listing of %s failed: %s; keeping %d shards",
                            self.spec.uri, error_code(exc), len(self.listed))
            else:
                self.listings += 1
                self.gone.clear()
            self._current = [n for n in self.listed if n not in self.gone]
        return self._current

    def list_shards(self) -> list[str]:
        """Every shard ``feed.uri`` names now (see the module docstring)."""
        path = self.spec.uri if self.s3 else self.spec.uri.removeprefix("file://")
        last = path.rsplit("/", 1)[-1]
        if _BRACE.search(path):
            names = expand_shard_pattern(path)
            return names if self.s3 else [n for n in names if os.path.isfile(n)]
        if "*" in last or "?" in last or "[" in last:
            return self._list_s3_glob(path) if self.s3 else sorted(glob.glob(path))
        if path.lower().endswith(".txt"):
            return self._read_list(path)
        if path.lower().endswith(SHARD_SUFFIXES):
            return [path]
        return self._list_s3_prefix(path) if self.s3 else self._walk(path)

    def _walk(self, folder: str) -> list[str]:
        return [os.path.join(root, name) for root, dirs, files in os.walk(folder)
                for name in files if name.lower().endswith(SHARD_SUFFIXES)
                and not name.startswith(".")]  # a shard being written is hidden until renamed

    def _list_s3_prefix(self, uri: str, accept: Callable[[str], bool] | None = None) -> list[str]:
        """ListObjectsV2 pages under ``uri``'s prefix, as ``s3://`` names of shards."""
        bucket, prefix = parse_s3_uri(uri)
        keep = accept or (lambda key: key.lower().endswith(SHARD_SUFFIXES))
        names: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": MAX_PAGE}
        while True:
            page = self.client().list_objects_v2(**kwargs)
            names += [f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", ())
                      if keep(o["Key"])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return names
            kwargs["ContinuationToken"] = token

    def _list_s3_glob(self, uri: str) -> list[str]:
        folder, pattern = uri.rsplit("/", 1)
        literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        _, prefix = parse_s3_uri(folder + "/")

        def accept(key: str) -> bool:
            rest = key[len(prefix):]
            return "/" not in rest and fnmatch.fnmatchcase(rest, pattern)

        return self._list_s3_prefix(f"{folder}/{literal}", accept)

    def _read_list(self, uri: str) -> list[str]:
        """A text list of shard URIs or patterns; relative lines against the list's folder."""
        if self.s3:
            bucket, key = parse_s3_uri(uri)
            text = self._call(uri, lambda: self._read_all(bucket, key)).decode()
        else:
            with open(uri, encoding="utf-8") as handle:
                text = handle.read()
        base = uri.rsplit("/", 1)[0] if "/" in uri else "."
        names: list[str] = []
        for line in (raw.strip() for raw in text.splitlines()):
            if line and not line.startswith("#"):
                full = line if "://" in line or line.startswith("/") else posixpath.join(base,
                                                                                           line)
                names += expand_shard_pattern(full)
        return names

    # -- opening --------------------------------------------------------------------------------
    def open(self, shard: str) -> ShardFile:
        """The shard as a file object: ObjectVanished / FileNotFoundError when it is gone
        (left out of :meth:`names` until the next listing), FetchFailed when the store did not
        answer within the retry budget."""
        try:
            if not self.s3:
                return open(shard, "rb")  # the visitor closes it
            bucket, key = parse_s3_uri(shard)
            if shard_format(shard) == "tar":
                return self._call(shard, lambda: self.client().get_object(
                    Bucket=bucket, Key=key))["Body"]
            size = int(self._call(shard, lambda: self.client().head_object(
                Bucket=bucket, Key=key))["ContentLength"])
            return RangedReader(lambda start, end: self._call(
                shard, lambda: self._read_all(bucket, key, f"bytes={start}-{end}")), size)
        except (ObjectVanished, FileNotFoundError):
            self.gone.add(shard)
            self._current = [n for n in self._current if n != shard]
            raise

    def _read_all(self, bucket: str, key: str, byte_range: str | None = None) -> bytes:
        """One GET's whole body (a body that breaks off is retried by :meth:`_call`)."""
        kwargs = {"Range": byte_range} if byte_range else {}
        body = self.client().get_object(Bucket=bucket, Key=key, **kwargs)["Body"]
        try:
            return b"".join(body_chunks(body))
        finally:
            body.close()

    def _call(self, name: str, fn: Callable[[], T]) -> T:
        """``fn`` (botocore retries each call) again with backoff while the store fails
        transiently, within ``feed.retry_budget_s``; errors mapped to the feed's."""
        start = time.monotonic()
        try:
            return call_with_retry(fn, self.policy, self.jitter, is_transient, capped=False)
        except RetryExhausted as exc:
            raise FetchFailed(name, error_code(exc.last), exc.attempts, exc.elapsed_s) from None
        except Exception as exc:
            if is_missing(exc):
                raise ObjectVanished(name) from None
            raise FetchFailed(name, error_code(exc), attempts(exc),
                              time.monotonic() - start) from None

    def close(self) -> None:
        self.client.close()
