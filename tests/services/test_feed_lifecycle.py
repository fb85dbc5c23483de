"""Feed lifecycles: no refresher outlives its feed, process feeds are released, refresh cycles
never overlap (issue 9, item 9).

Waits here are on events and conditions with generous timeouts, never on how fast a loaded
machine is. The few bounded waits that *expect nothing to happen* (a rendezvous that a correct
feed never completes) can only make a broken feed look correct on a very slow machine, never
make a correct one fail.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.feed import FeedClosed, FeedSpec, open_feed
from services.feed.pooled import PooledFeed
from services.feed.s3 import S3Feed
from services.ingest.read import close_process_feeds, process_feed
from tests.waiting import pooled_keys, refresher_threads, wait_until

REPO = Path(__file__).resolve().parents[2]
#: Generous: how long a condition may take on a loaded 2-core machine before the test gives up.
PATIENCE_S = 60.0


@pytest.fixture(autouse=True)
def _no_leaked_refreshers(no_leaked_refreshers: None) -> Iterator[None]:
    """Every test here must stop the refresher threads it starts (process feeds included)."""
    yield
    close_process_feeds()


def _threads_of(uri: str) -> set[threading.Thread]:
    return {t for t in refresher_threads() if uri in t.name and t.is_alive()}


def _images(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"{i}.jpg").write_bytes(b"x")
    return root


# -- close() stops the refresher, even in the middle of a long listing --------------------------
def test_close_stops_a_refresher_in_the_middle_of_a_long_s3_listing() -> None:
    """A 1M-key pool takes ~1000 pages to fill: close() must not wait for the cycle to end."""
    spec = FeedSpec("s3://bucket/img/", endpoint_url="http://127.0.0.1:9", pool_size=1_000_000,
                    refresh_seconds=60.0)
    feed = S3Feed(spec)
    pages = 0
    listing = threading.Event()
    latency = threading.Event()  # never set: a page "takes" a little time, like a real store

    def endless_page(bucket: str, prefix: str, start_after: str | None, max_keys: int) -> dict:
        nonlocal pages
        pages += 1
        if pages >= 3:
            listing.set()
        latency.wait(0.002)
        keys = [f"img/{(pages * 10 + i) % 5000:05d}.jpg" for i in range(10)]
        return {"Contents": [{"Key": k} for k in keys], "IsTruncated": True}

    feed.s3.list_page = endless_page  # type: ignore[method-assign]
    assert feed.pool_size() >= 0  # starts the refresher
    (thread,) = _threads_of(spec.uri)
    assert listing.wait(PATIENCE_S)
    feed.close()
    assert not thread.is_alive(), "the refresher kept listing after close()"
    with pytest.raises(FeedClosed):
        feed.refresh_now()


def test_close_stops_a_refresher_in_the_middle_of_a_long_directory_walk(tmp_path: Path) -> None:
    feed = open_feed(FeedSpec(str(tmp_path), pool_size=100, refresh_seconds=60.0))
    walking = threading.Event()

    def endless_walk() -> Iterator[str]:
        i = 0
        while True:
            i += 1
            if i == 5000:
                walking.set()
            yield f"{tmp_path}/{i}.jpg"

    feed._walk = endless_walk  # type: ignore[attr-defined]
    feed.pool_size()
    (thread,) = _threads_of(str(tmp_path))
    assert walking.wait(PATIENCE_S)
    feed.close()
    assert not thread.is_alive(), "the refresher kept walking after close()"


# -- an unused feed stops listing -----------------------------------------------------------------
def test_idle_refresher_parks_and_the_next_use_restarts_it(tmp_path: Path) -> None:
    root = _images(tmp_path / "a")
    spec = FeedSpec(str(root), refresh_seconds=0.01, idle_stop_s=0.05)
    with open_feed(spec) as feed:
        assert len(feed.sample(3, random.Random(0), timeout=PATIENCE_S)) == 3
        # Nobody samples or fetches: the refresher stops by itself (the pool is kept).
        assert wait_until(lambda: not _threads_of(str(root)), PATIENCE_S)
        refreshes = feed.stats()["refreshes"]
        assert feed.stats()["refresher_parks"] >= 1
        assert len(feed.sample(1, random.Random(0), timeout=0.0)) == 1  # the kept pool
        # ... and that use restarted the refresher: it refreshes again (and may park again).
        assert wait_until(lambda: feed.stats()["refreshes"] > refreshes, PATIENCE_S)
    assert not _threads_of(str(root))


# -- process_feed: one feed per spec per process, with a bounded lifetime --------------------------
def test_process_feed_closes_the_feed_of_a_previous_spec(tmp_path: Path) -> None:
    a = FeedSpec(str(_images(tmp_path / "a")), refresh_seconds=60.0)
    b = FeedSpec(str(_images(tmp_path / "b")), refresh_seconds=60.0)
    feed_a = process_feed(a)
    feed_a.sample(1, random.Random(0), timeout=PATIENCE_S)
    assert _threads_of(a.uri)
    feed_b = process_feed(b)
    feed_b.sample(1, random.Random(0), timeout=PATIENCE_S)
    assert not _threads_of(a.uri), "the previous spec's refresher is still listing"
    assert feed_a.closed and not feed_b.closed
    assert process_feed(b) is feed_b


def test_process_feed_keeps_a_feed_with_a_call_in_flight(tmp_path: Path) -> None:
    a_root = tmp_path / "a"
    a_root.mkdir()  # empty: a sample waits for the first key
    a = FeedSpec(str(a_root), refresh_seconds=0.01)
    b = FeedSpec(str(_images(tmp_path / "b")), refresh_seconds=60.0)
    feed_a = process_feed(a)
    got: list[Any] = []
    sampler = threading.Thread(
        target=lambda: got.append(feed_a.sample(1, random.Random(0), timeout=PATIENCE_S))
    )
    sampler.start()
    try:
        assert wait_until(lambda: feed_a.calls_in_flight() == 1, PATIENCE_S)
        process_feed(b)
        assert not feed_a.closed, "a feed in use by another thread was closed under it"
    finally:
        _images(a_root, 1)
        sampler.join(PATIENCE_S)
    assert got == [[str(a_root / "0.jpg")]]


def test_process_feed_reopens_a_feed_closed_elsewhere(tmp_path: Path) -> None:
    spec = FeedSpec(str(_images(tmp_path / "a")), refresh_seconds=60.0)
    first = process_feed(spec)
    first.close()
    second = process_feed(spec)
    assert second is not first and not second.closed
    assert len(second.sample(1, random.Random(0), timeout=PATIENCE_S)) == 1


def test_process_feeds_are_closed_at_interpreter_exit(tmp_path: Path) -> None:
    root = _images(tmp_path / "a")
    script = textwrap.dedent(
        """
        import random, sys, threading
        from services.feed import FeedSpec
        from services.feed.pooled import PooledFeed
        from services.ingest.read import process_feed

        original = PooledFeed.close

        def close(self, *args, **kwargs):
            original(self, *args, **kwargs)
            alive = [t for t in threading.enumerate()
                     if t.name.startswith("seer-feed-refresh") and t.is_alive()]
            print("closed", len(alive), flush=True)

        PooledFeed.close = close
        feed = process_feed(FeedSpec(sys.argv[1], refresh_seconds=60.0))
        feed.sample(1, random.Random(0), timeout=60)
        print("sampled", flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script, str(root)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["sampled", "closed", "0"], out.stdout


# -- refresh_now and the background refresher serialise -------------------------------------------
class RendezvousFeed(PooledFeed):
    """A feed whose refresh cycle waits, for a bounded window, for another cycle to join it.

    A cycle reads the feed's state at entry and writes it back at exit, like the real feeds'
    key-space state (S3Feed's alphabet and sweep flag, ManifestFeed's version): two cycles that
    overlap lose an update. With serialised cycles the rendezvous never happens and each cycle
    leaves after its window.
    """

    def __init__(self, spec: FeedSpec, window_s: float) -> None:
        super().__init__(spec)
        self.window_s = window_s
        self.mu = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.cycles = 0
        self.generation = 0
        self.entered = threading.Event()
        self.overlap = threading.Event()

    def _refresh(self) -> None:
        with self.mu:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            if self.active > 1:
                self.overlap.set()
        self.entered.set()
        try:
            generation = self.generation
            self.overlap.wait(self.window_s)
            self.generation = generation + 1
            self._count_keys(self._pool.add([f"k{self.generation}"]))
        finally:
            with self.mu:
                self.active -= 1
                self.cycles += 1

    def _fetch(self, key: str, max_bytes: int | None) -> bytes:
        return key.encode()


def test_refresh_now_and_the_background_refresher_never_overlap(tmp_path: Path) -> None:
    spec = FeedSpec(str(tmp_path), refresh_seconds=0.001, pool_size=1000)
    feed = RendezvousFeed(spec, window_s=0.2)
    try:
        feed.pool_size()  # the background refresher starts and loops without pause
        assert feed.entered.wait(PATIENCE_S)
        for _ in range(4):
            feed.refresh_now()
    finally:
        feed.close()
    assert not feed.overlap.is_set(), "refresh_now ran beside the background refresher"
    assert feed.max_active == 1
    assert feed.generation == feed.cycles  # no lost update
    keys = pooled_keys(feed)
    assert len(keys) == len(set(keys)) == feed.cycles
    assert not _threads_of(spec.uri)


class BlockingFeed(PooledFeed):
    """A feed whose refresh cycle blocks until released (a slow listing held by refresh_now)."""

    def __init__(self, spec: FeedSpec) -> None:
        super().__init__(spec)
        self.inside = threading.Event()
        self.release = threading.Event()

    def _refresh(self) -> None:
        self.inside.set()
        assert self.release.wait(PATIENCE_S)

    def _fetch(self, key: str, max_bytes: int | None) -> bytes:
        return key.encode()


def test_a_refresher_waiting_for_refresh_now_still_stops_on_close(tmp_path: Path) -> None:
    feed = BlockingFeed(FeedSpec(str(tmp_path), refresh_seconds=60.0))
    manual = threading.Thread(target=feed.refresh_now)
    manual.start()
    try:
        assert feed.inside.wait(PATIENCE_S)
        feed.pool_size()  # the refresher starts, and must wait for refresh_now's cycle
        (refresher,) = _threads_of(str(tmp_path))
        feed.close()
        assert not refresher.is_alive(), "the refresher outlived close()"
    finally:
        feed.release.set()
        manual.join(PATIENCE_S)
    assert not manual.is_alive()
