"""ManifestFeed with local manifests: Parquet, CSV, text; resolution; re-read on change."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.feed import FeedEmpty, FeedSpec, ObjectVanished, open_feed
from services.feed.manifest import ManifestFeed
from tests.waiting import pooled_keys, wait_until

#: Generous: how long a condition may take on a loaded 2-core machine before it is a hang.
PATIENCE_S = 60.0


@pytest.fixture(autouse=True)
def _no_leaked_refreshers(no_leaked_refreshers: None) -> None:
    """Every test here must stop the refresher threads it starts."""


@pytest.fixture
def images(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        (d / f"{i}.jpg").write_bytes(b"img%d" % i)
    return d


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_text_manifest_relative_to_its_directory(tmp_path: Path, images: Path) -> None:
    m = tmp_path / "list.txt"
    m.write_text("# comment\nimgs/0.jpg\n\n  imgs/1.jpg  \n" + f"{images}/2.jpg\n")
    with open_feed(FeedSpec(str(m), refresh_seconds=60)) as feed:
        assert isinstance(feed, ManifestFeed)
        keys = set(feed.sample(100, random.Random(0)))
        assert keys == {str(images / f"{i}.jpg") for i in range(3)}
        assert feed.fetch(str(images / "1.jpg")) == b"img1"


def test_parquet_manifest_with_base_and_uri_column_fallback(tmp_path: Path, images: Path) -> None:
    m = tmp_path / "list.parquet"
    pq.write_table(pa.table({"uri": ["0.jpg", "3.jpg", None], "size": [1, 2, 3]}), m)
    spec = FeedSpec(str(m), manifest_base=str(images), refresh_seconds=60)
    with open_feed(spec) as feed:
        assert set(feed.sample(50, random.Random(0))) == {str(images / "0.jpg"),
                                                          str(images / "3.jpg")}
    bad = FeedSpec(str(m), manifest_column="path", refresh_seconds=60)
    with open_feed(bad) as feed:
        # Wait for the failed first read (however slow the machine), then ask without waiting.
        assert wait_until(lambda: feed.pool_size() == 0 and feed.stats()["refresh_errors"] >= 1,
                          PATIENCE_S)
        with pytest.raises(FeedEmpty, match="no column 'path'"):
            feed.sample(1, random.Random(0), timeout=0.0)


def test_large_parquet_manifest_is_sampled_into_the_pool(tmp_path: Path) -> None:
    m = tmp_path / "big.parquet"
    pq.write_table(pa.table({"key": [f"/d/{i}.jpg" for i in range(5000)]}), m, row_group_size=700)
    with open_feed(FeedSpec(str(m), pool_size=300, refresh_seconds=0.05)) as feed:
        assert wait_until(lambda: feed.pool_size() == 300, PATIENCE_S)
        first = set(pooled_keys(feed))
        assert len(first) == 300 and all(k.startswith("/d/") for k in first)
        # Spread over the whole manifest, not its head.
        assert max(int(k[3:-4]) for k in first) > 4000 and min(int(k[3:-4]) for k in first) < 1000
        # Larger than the pool: re-drawn every refresh, so the pool moves through it.
        assert wait_until(lambda: set(pooled_keys(feed)) != first, PATIENCE_S)
        assert feed.stats()["source_objects"] == 5000


def test_csv_manifest(tmp_path: Path, images: Path) -> None:
    m = tmp_path / "list.csv"
    m.write_text("id,key\n1,imgs/4.jpg\n2,imgs/0.jpg\n")
    with open_feed(FeedSpec(str(m), refresh_seconds=60)) as feed:
        assert set(feed.sample(40, random.Random(0))) == {str(images / "4.jpg"),
                                                          str(images / "0.jpg")}


def test_manifest_re_read_when_changed(tmp_path: Path, images: Path) -> None:
    m = tmp_path / "list.txt"
    m.write_text("imgs/0.jpg\n")
    with open_feed(FeedSpec(str(m), refresh_seconds=0.05)) as feed:
        want_first = [str(images / "0.jpg")] * 3
        assert feed.sample(3, random.Random(0), timeout=PATIENCE_S) == want_first
        reads = feed.stats()["manifest_reads"]
        refreshes = feed.stats()["refreshes"]
        # Two whole refresh cycles later (counted, not timed), still one read: unchanged files
        # are not re-read.
        assert wait_until(lambda: feed.stats()["refreshes"] >= refreshes + 2, PATIENCE_S)
        assert feed.stats()["manifest_reads"] == reads
        m.write_text("imgs/1.jpg\nimgs/2.jpg\n")
        bump_mtime(m)
        want = {str(images / "1.jpg"), str(images / "2.jpg")}
        assert wait_until(lambda: set(pooled_keys(feed)) == want, PATIENCE_S)


def test_vanished_entry(tmp_path: Path, images: Path) -> None:
    m = tmp_path / "list.txt"
    m.write_text("imgs/0.jpg\nimgs/1.jpg\n")
    with open_feed(FeedSpec(str(m), refresh_seconds=60)) as feed:
        assert wait_until(lambda: feed.pool_size() == 2, PATIENCE_S)
        os.remove(images / "0.jpg")
        with pytest.raises(ObjectVanished):
            feed.fetch(str(images / "0.jpg"))
        assert pooled_keys(feed) == [str(images / "1.jpg")]
