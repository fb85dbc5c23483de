"""A local directory as a feed: the embedded default (``seer pretrain`` with no flags).

Walked in full each refresh, which suits the sample sets and mounted volumes this is meant for;
when it holds more files than the pool, the pool is a uniform random subset drawn afresh each
refresh, so every file gets its turn.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from services.feed.base import FeedError, FeedSpec, FetchFailed, ObjectTooLarge, ObjectVanished
from services.feed.pooled import PooledFeed
from services.s3 import RetryExhausted, RetryPolicy, call_with_retry

T = TypeVar("T")

# Errors that mean "this file is gone" vs "this will not get better by waiting".
_MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})
_PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENAMETOOLONG})


def local_path(uri: str) -> str:
    """``file:///a/b`` or ``/a/b`` or ``a/b`` -> an absolute local path."""
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI with a remote host is not supported: {uri!r}")
        uri = unquote(parts.path)
    return os.path.abspath(os.path.expanduser(uri))


def reservoir(items: Iterable[T], k: int, rng: random.Random,
              check: Callable[[], None] | None = None) -> tuple[list[T], int]:
    """A uniform random sample of at most ``k`` items from a stream, and the stream's length, in
    one pass and O(k) memory (a walk or a text manifest may be far larger than the pool).
    ``check`` runs every 4096 items, so ``close()`` can end a pass over millions of entries."""
    sample: list[T] = []
    n = 0
    for item in items:
        n += 1
        if check is not None and n % 4096 == 0:
            check()
        if len(sample) < k:
            sample.append(item)
        else:
            j = rng.randrange(n)
            if j < k:
                sample[j] = item
    return sample, n


def read_local(feed: PooledFeed, path: str, max_bytes: int | None = None) -> bytes:
    """Reads a local file with the feed's retry policy (network file systems hiccup too).
    Missing: ObjectVanished; permission or is-a-directory: FetchFailed at once; other OS errors
    (EIO, ESTALE, timeouts on a network mount): retried within the budget."""
    policy = RetryPolicy(max_attempts=feed.spec.max_attempts, budget_s=feed.spec.retry_budget_s)
    start = time.monotonic()

    def attempt() -> bytes:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise ObjectTooLarge(path, size, max_bytes)
            return f.read()

    def transient(exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno not in _MISSING_ERRNOS | _PERMANENT_ERRNOS

    try:
        return call_with_retry(attempt, policy, feed.jitter_rng, transient,
                               lambda *_: feed.count("retries"), feed.sleep)
    except RetryExhausted as exc:
        raise FetchFailed(path, type(exc.last).__name__, exc.attempts, exc.elapsed_s) from None
    except OSError as exc:
        if exc.errno in _MISSING_ERRNOS:
            raise ObjectVanished(path) from None
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise FetchFailed(path, reason, 1, time.monotonic() - start) from None


class DirectoryFeed(PooledFeed):
    """Image files under a directory (recursively), re-scanned every ``refresh_seconds``."""

    def __init__(self, spec: FeedSpec) -> None:
        super().__init__(spec)
        self.root = local_path(spec.uri)

    def _walk(self) -> Iterator[str]:
        def on_error(exc: OSError) -> None:
            # An unreadable subdirectory should not hide the rest of the tree.
            self.log.warning("walk-error", "feed %s: cannot read %s", self.root, exc.filename)

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=on_error):
            self.check_open()  # directories with no image in them yield nothing to reservoir()
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fn in filenames:
                if not fn.startswith(".") and self.spec.accepts(fn):
                    yield os.path.join(dirpath, fn)

    def _refresh(self) -> None:
        if not os.path.isdir(self.root):
            raise FeedError(f"directory {self.root} does not exist")
        self.count("listings")
        sample, total = reservoir(
            self._walk(), self.spec.pool_size, self._rng, check=self.check_open
        )
        self._set("source_objects", total)
        self._count_keys(self._pool.replace(sample))

    def _fetch(self, key: str, max_bytes: int | None) -> bytes:
        return read_local(self, key, max_bytes=max_bytes)
