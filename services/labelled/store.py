"""Reading a labelled set's files: a local folder, or an S3 bucket through boto3.

The S3 client follows the feed's rules (services.feed.s3): the endpoint is resolved by
``services.s3_endpoint`` (flag, else the environment) like every seer S3 client's, credentials come
only from boto3's standard chain (unsigned requests when there are none, for public buckets),
botocore's own retries are turned down so that our bounded policy with full jitter governs every
call, and messages carry S3 error codes, never URLs with signatures or keys.
"""

from __future__ import annotations

import os
import random
import threading
from typing import Any
from urllib.parse import urlsplit

from services.feed.retry import (
    MISSING,
    TRANSIENT,
    RetryExhausted,
    RetryPolicy,
    call_with_retry,
    classify_s3_error,
    error_code,
)
from services.feed.s3 import make_s3_client, parse_s3_uri
from services.labelled.base import LabelledDataError, is_hidden, logger
from services.s3_endpoint import s3_endpoint

#: Objects larger than this are skipped as "too_large" before their bytes are read: no photo in
#: a labelled set is this big, and a mislabelled archive must not land in memory.
MAX_OBJECT_BYTES = 256 << 20

#: Concurrent S3 requests (and the client's connection pool to match).
S3_CONCURRENCY = 16


class Skip(Exception):
    """An object that is not read, with ``reason`` (a skip-count key): it vanished after being
    listed, or it is larger than MAX_OBJECT_BYTES."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# -- local -----------------------------------------------------------------------------------


def walk_local(root: str) -> tuple[list[str], list[str]]:
    """(files, folders) under ``root``, relative and ``/``-separated; hidden folders pruned.

    Symbolic links are followed (data sets are often assembled from links), as ImageFolder does.
    """
    files: list[str] = []
    dirs: list[str] = []
    for here, subdirs, names in os.walk(root, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not is_hidden(d))
        rel = os.path.relpath(here, root)
        rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        dirs.extend(rel + d for d in subdirs)
        files.extend(rel + n for n in names if not is_hidden(n))
    return files, dirs


def read_local(path: str) -> bytes:
    """A file's bytes; Skip when it vanished or is too large, LabelledDataError when it cannot
    be read (permissions, I/O): that is the environment to fix, not an image to drop."""
    try:
        size = os.path.getsize(path)
        if size > MAX_OBJECT_BYTES:
            raise Skip("too_large", f"{size} bytes > {MAX_OBJECT_BYTES}")
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise Skip("vanished", "disappeared after it was listed") from None
    except OSError as exc:
        raise LabelledDataError(f"cannot read {path}: {exc.strerror or exc}") from None


# -- S3 --------------------------------------------------------------------------------------


def parse_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); LabelledDataError without a bucket."""
    try:
        return parse_s3_uri(uri)
    except ValueError as exc:
        raise LabelledDataError(str(exc)) from None


class S3Store:
    """One lazily built, thread-safe boto3 client and the retry policy around every call."""

    def __init__(self, endpoint_url: str | None, policy: RetryPolicy | None = None) -> None:
        try:  # refuses a user:password@ URL, naming where it came from, never the value
            self.endpoint = s3_endpoint(endpoint_url)
        except ValueError as exc:
            raise LabelledDataError(str(exc)) from None
        if self.endpoint is not None:
            ep = urlsplit(self.endpoint)
            if ep.scheme not in ("http", "https") or not ep.netloc:
                raise LabelledDataError("endpoint_url: must be an http:// or https:// URL")
        self.policy = policy or RetryPolicy(max_attempts=6, budget_s=60.0)
        self._rng = random.Random()  # retry jitter only: must not be seeded alike everywhere
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        return make_s3_client(self.endpoint, read_timeout=60.0,
                              max_pool_connections=S3_CONCURRENCY, what="labelled set")

    def _call(self, fn: Any) -> Any:
        def on_retry(exc: BaseException, attempt: int, wait: float) -> None:
            logger.info("S3: transient %s, retry %d in %.2fs", error_code(exc), attempt, wait)

        return call_with_retry(
            fn,
            self.policy,
            self._rng,
            lambda e: classify_s3_error(e) == TRANSIENT,
            on_retry=on_retry,
        )

    def _error(self, action: str, uri: str, exc: BaseException) -> LabelledDataError:
        if isinstance(exc, RetryExhausted):
            return LabelledDataError(
                f"cannot {action} {uri}: {error_code(exc.last)} after {exc.attempts} attempts "
                f"in {exc.elapsed_s:.0f}s (is the endpoint reachable?)"
            )
        code = error_code(exc)
        if code == "NoSuchBucket":
            return LabelledDataError(f"not found: {uri}: the bucket does not exist")
        return LabelledDataError(f"cannot {action} {uri}: {code}")

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a ListObjectsV2 paginator, retried as a whole: the
        labelled sets are small, and a restarted listing cannot miss or repeat a key)."""

        def listing() -> list[str]:
            paginator = self.client().get_paginator("list_objects_v2")
            keys: list[str] = []
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", ()))
            return keys

        try:
            return self._call(listing)
        except Exception as exc:
            raise self._error("list", f"s3://{bucket}/{prefix}", exc) from None

    def get(self, bucket: str, key: str, max_bytes: int | None = MAX_OBJECT_BYTES) -> bytes:
        """The object's bytes; Skip when it vanished or is larger than ``max_bytes`` (its body
        left unread)."""
        uri = f"s3://{bucket}/{key}"

        def attempt() -> bytes:
            response = self.client().get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                size = response.get("ContentLength")
                if max_bytes is not None and size is not None and size > max_bytes:
                    raise Skip("too_large", f"{size} bytes > {max_bytes}")
                return body.read()  # a truncated body raises, and is retried
            finally:
                body.close()

        try:
            return self._call(attempt)
        except Skip:
            raise
        except Exception as exc:
            if classify_s3_error(exc) == MISSING:
                raise Skip("vanished", "disappeared after it was listed") from None
            raise self._error("read", uri, exc) from None

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
