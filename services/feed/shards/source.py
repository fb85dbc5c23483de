"""The store side of the shard feed, local or on S3: the shard list of a ``feed.uri`` (sampled
by the run's owner) and the opener of a shard (for each read task's visitor).

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

The list is the pool of a :class:`~services.feed.pooled.PooledFeed` (the shard names are its
keys, held whole up to :data:`~services.feed.shards.names.MAX_SHARD_NAMES`), refreshed in the
background every ``feed.refresh_seconds`` (an empty listing counts as a failed refresh, so it is
made again within seconds, backing off to 30 s, rather than a full refresh later); a listing
that fails keeps the last list. In a Ray stream only the run's owner samples it
(``services.ingest.keys``: one listing per refresh for the whole run); a read task's source is
never sampled, so it never lists, and only opens. Every S3 client is wrapped in
``count_requests`` (``seer_feed_requests_total{op}``). Opening: a tar is the streaming body of
one GET (its members are read as they arrive); a Parquet table is one HEAD for its size, then
ranged GETs through a :class:`~services.feed.shards.ranged.RangedReader`. Store errors map to
the feed's: ObjectVanished (gone since listed), FetchFailed (no answer within the retry budget).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import posixpath
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from services.feed.base import FeedEmpty, FeedSpec, FetchFailed, ObjectVanished
from services.feed.pool import KeyPool
from services.feed.pooled import PooledFeed
from services.feed.s3 import MAX_PAGE, S3Access, parse_s3_uri
from services.feed.shards.names import MAX_SHARD_NAMES, expand_shard_pattern
from services.feed.shards.ranged import RangedReader
from services.feed.shards.readers import PARQUET_SUFFIXES, TAR_SUFFIXES, ShardFile, shard_format
from services.s3 import (
    RetryExhausted,
    attempts,
    body_chunks,
    call_with_retry,
    error_code,
    is_missing,
    is_transient,
)

T = TypeVar("T")

SHARD_SUFFIXES = TAR_SUFFIXES + PARQUET_SUFFIXES
_BRACE = re.compile(r"\{[^{}]*\}")


class ShardSource(PooledFeed):
    """The shard list of one spec as a feed's pool (``sample`` draws shard names uniformly with
    replacement; ``forget`` drops vanished ones until the next listing), and the opener of a
    shard (:meth:`open`, the visitor's ``opener``). Never ``fetch``: a shard is streamed."""

    def __init__(self, spec: FeedSpec) -> None:
        super().__init__(spec)
        self._pool = KeyPool(MAX_SHARD_NAMES)  # the whole list: a cut would bias the draws
        self.s3 = spec.uri.startswith("s3://")
        access = S3Access(spec, self)  # the object feed's client and retry policy
        self.policy, self.client = access.policy, access.client

    # -- listing --------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """One listing: the pool becomes exactly the shards listed (vanished ones are back until
        found gone again). FeedEmpty when there are none: a failed refresh, retried sooner."""
        names = self.list_shards()
        self.count("listings")
        self._set("source_objects", len(names))
        self._count_keys(self._pool.replace(names))
        if not names:
            raise FeedEmpty(f"no shards listed for {self.spec.uri}")

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
            self.check_open()  # close() ends a long listing between pages
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
        (forgotten until the next listing: the caller tells the run's owner), FetchFailed when
        the store did not answer within the retry budget."""
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
            self.count("vanished")
            self.forget((shard,))
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
            return call_with_retry(fn, self.policy, self.jitter_rng, is_transient, capped=False)
        except RetryExhausted as exc:
            raise FetchFailed(name, error_code(exc.last), exc.attempts, exc.elapsed_s) from None
        except Exception as exc:
            if is_missing(exc):
                raise ObjectVanished(name) from None
            raise FetchFailed(name, error_code(exc), attempts(exc),
                              time.monotonic() - start) from None

    def _close_resources(self) -> None:
        self.client.close()
