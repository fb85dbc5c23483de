"""Polling helpers shared by tests that wait for background threads and services."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

REFRESHER_PREFIX = "seer-feed-refresh"


def wait_until(cond: Callable[[], object], timeout: float = 10.0) -> bool:
    """Polls `cond` until it is truthy or `timeout` seconds pass; returns the last verdict."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def refresher_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(REFRESHER_PREFIX)}


def pooled_keys(feed: Any) -> list[str]:
    """A snapshot of a feed's pool; like ``pool_size()`` it starts the refresher, so polling it
    makes progress."""
    feed.pool_size()
    return feed._pool.snapshot()
