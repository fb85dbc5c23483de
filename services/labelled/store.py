"""Reading a labelled set's files: a local folder, or an S3 bucket through services.s3 (the one
S3 layer: endpoint, credentials, retries). Messages carry S3 error codes, never URLs with
signatures or keys."""

from __future__ import annotations

import os
import random
from urllib.parse import urlsplit

from services.labelled.base import LabelledDataError, is_hidden, logger
from services.s3 import (
    LazyClient,
    RetryExhausted,
    RetryPolicy,
    attempts,
    error_code,
    get_bytes,
    is_missing,
    make_client,
    s3_endpoint,
)

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


class S3Store:
    """A labelled set's bucket: its client and retry policy (a read retried within
    ``policy.budget_s``)."""

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
        self.client = LazyClient(lambda: make_client(
            self.endpoint, max_attempts=self.policy.max_attempts,
            max_pool_connections=S3_CONCURRENCY, what="labelled set"))

    def _error(self, action: str, uri: str, exc: BaseException) -> LabelledDataError:
        if isinstance(exc, RetryExhausted):
            return LabelledDataError(
                f"cannot {action} {uri}: {error_code(exc.last)} after {exc.attempts} attempts "
                f"in {exc.elapsed_s:.0f}s (is the endpoint reachable?)"
            )
        code = error_code(exc)
        if code == "NoSuchBucket":
            return LabelledDataError(f"not found: {uri}: the bucket does not exist")
        return LabelledDataError(f"cannot {action} {uri}: {code} after {attempts(exc)} "
                                 "attempt(s)")

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a ListObjectsV2 paginator; botocore retries each page)."""
        try:
            paginator = self.client().get_paginator("list_objects_v2")
            return [obj["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                    for obj in page.get("Contents", ())]
        except Exception as exc:
            raise self._error("list", f"s3://{bucket}/{prefix}", exc) from None

    def get(self, bucket: str, key: str, max_bytes: int | None = MAX_OBJECT_BYTES) -> bytes:
        """The object's bytes; Skip when it vanished or is larger than ``max_bytes`` (its body
        left unread)."""

        def on_retry(exc: BaseException, attempt: int, wait: float) -> None:
            logger.info("S3: reading s3://%s/%s: %s, retry %d in %.2fs", bucket, key,
                        error_code(exc), attempt, wait)

        try:
            return get_bytes(self.client(), bucket, key, self.policy, self._rng,
                             max_bytes=max_bytes, on_retry=on_retry,
                             too_large=lambda size: Skip("too_large",
                                                         f"{size} bytes > {max_bytes}"))[0]
        except Skip:
            raise
        except Exception as exc:
            if is_missing(exc):
                raise Skip("vanished", "disappeared after it was listed") from None
            raise self._error("read", f"s3://{bucket}/{key}", exc) from None

    def close(self) -> None:
        self.client.close()
