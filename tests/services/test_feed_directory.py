"""DirectoryFeed: walking, filtering, re-scans, vanished files, empty feeds, threads."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest

from services.feed import (
    FeedEmpty,
    FeedSpec,
    ObjectTooLarge,
    ObjectVanished,
    PooledFeed,
    open_feed,
)
from tests.waiting import pooled_keys, refresher_threads, wait_until

#: Generous: how long a condition may take on a loaded 2-core machine before it is a hang.
PATIENCE_S = 60.0


@pytest.fixture(autouse=True)
def _no_leaked_refreshers(no_leaked_refreshers: None) -> None:
    """Every test here must stop the refresher threads it starts."""


def make_tree(root: Path, names: list[str]) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(name.encode())


def test_walks_recursively_with_extension_filter(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a.jpg", "sub/b.PNG", "sub/deeper/c.jpeg", "notes.txt", ".hidden.jpg",
                         ".cache/d.jpg"])
    with open_feed(f"file://{tmp_path}", refresh_seconds=60) as feed:
        assert isinstance(feed, PooledFeed)
        keys = set(feed.sample(200, random.Random(0)))
        assert keys == {str(tmp_path / n) for n in ["a.jpg", "sub/b.PNG", "sub/deeper/c.jpeg"]}
        assert feed.fetch(str(tmp_path / "sub/b.PNG")) == b"sub/b.PNG"
        assert feed.pool_size() == 3
        stats = feed.stats()
        assert stats["fetches"] == 1 and stats["bytes_fetched"] == len(b"sub/b.PNG")
        assert stats["source_objects"] == 3


def test_any_extension_when_empty(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a.jpg", "b.bin"])
    with open_feed(FeedSpec(str(tmp_path), extensions=())) as feed:
        assert set(feed.sample(100, random.Random(0))) == {str(tmp_path / "a.jpg"),
                                                           str(tmp_path / "b.bin")}


def test_rescan_sees_added_and_removed_files(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a.jpg", "b.jpg"])
    with open_feed(FeedSpec(str(tmp_path), refresh_seconds=0.05)) as feed:
        assert feed.pool_size() in (0, 2)
        assert wait_until(lambda: feed.pool_size() == 2, PATIENCE_S)
        make_tree(tmp_path, ["c.jpg"])
        os.remove(tmp_path / "a.jpg")
        assert wait_until(lambda: set(pooled_keys(feed)) == {str(tmp_path / "b.jpg"),
                                                        str(tmp_path / "c.jpg")}, PATIENCE_S)
        assert feed.stats()["refreshes"] >= 2


def test_vanished_file_raises_and_leaves_the_pool(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a.jpg", "b.jpg"])
    with open_feed(FeedSpec(str(tmp_path), refresh_seconds=60)) as feed:
        assert wait_until(lambda: feed.pool_size() == 2, PATIENCE_S)
        gone = str(tmp_path / "a.jpg")
        os.remove(gone)
        with pytest.raises(ObjectVanished) as info:
            feed.fetch(gone)
        assert info.value.key == gone
        assert gone not in pooled_keys(feed)
        assert feed.stats()["vanished"] == 1


def test_pool_bounded_and_uniform_over_large_directory(tmp_path: Path) -> None:
    make_tree(tmp_path, [f"{i:03d}.jpg" for i in range(60)])
    with open_feed(FeedSpec(str(tmp_path), pool_size=20, refresh_seconds=60)) as feed:
        assert wait_until(lambda: feed.pool_size() == 20, PATIENCE_S)
        assert feed.stats()["source_objects"] == 60
        counts = Counter(feed.sample(8000, random.Random(1)))
        assert len(counts) == 20
        chi2 = sum((c - 400) ** 2 / 400 for c in counts.values())
        assert chi2 < 43.8  # 19 d.o.f., p = 0.001


def test_empty_directory_raises_feed_empty_with_reason(tmp_path: Path) -> None:
    make_tree(tmp_path, ["only.txt"])
    feed = open_feed(FeedSpec(str(tmp_path), refresh_seconds=60))
    with feed:
        # Wait for the first listing to end (however slow the machine), then ask without waiting.
        assert wait_until(lambda: feed.pool_size() == 0 and feed.stats()["refreshes"] >= 1,
                          PATIENCE_S)
        with pytest.raises(FeedEmpty, match="no matching objects"):
            feed.sample(1, random.Random(0), timeout=0.0)


def test_missing_directory_reports_the_refresh_error_and_recovers(tmp_path: Path) -> None:
    root = tmp_path / "later"
    with open_feed(FeedSpec(str(root), refresh_seconds=0.05)) as feed:
        assert wait_until(lambda: feed.pool_size() == 0 and feed.stats()["refresh_errors"] >= 1,
                          PATIENCE_S)
        with pytest.raises(FeedEmpty, match="does not exist"):
            feed.sample(1, random.Random(0), timeout=0.0)
        make_tree(root, ["x.jpg"])
        assert feed.sample(2, random.Random(0), timeout=PATIENCE_S) == [str(root / "x.jpg")] * 2


def test_close_stops_the_refresher(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a.jpg"])
    feed = open_feed(FeedSpec(str(tmp_path), refresh_seconds=0.01))
    feed.sample(1, random.Random(0), timeout=PATIENCE_S)
    assert any(str(tmp_path) in t.name for t in refresher_threads())
    feed.close()
    feed.close()  # idempotent
    # close() joined the refresher: nothing is left that could refresh again (no sleep needed).
    assert not any(str(tmp_path) in t.name for t in refresher_threads())
    assert feed.closed


def test_oversized_file_refused_from_its_size(tmp_path: Path) -> None:
    (tmp_path / "big.jpg").write_bytes(b"x" * 5000)
    with open_feed(str(tmp_path), refresh_seconds=60.0) as feed:
        key = feed.sample(1, random.Random(0))[0]
        with pytest.raises(ObjectTooLarge, match="5000 bytes > 100"):
            feed.fetch(key, max_bytes=100)
        assert feed.fetch(key, max_bytes=5000) == b"x" * 5000
