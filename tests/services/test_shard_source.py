"""The shard source on local paths (a laptop run): what each form of ``feed.uri`` lists, the
list as a feed's pool (drawn with replacement, refreshed, vanished files left out), and the
shard read task's blocks and pause on an empty list."""

from __future__ import annotations

import itertools
import pickle
import random
from pathlib import Path

import pytest

from services.feed import FeedSpec
from services.feed.shards.source import ShardSource
from services.images.shards import write_parquet_shards, write_webdataset_shards
from services.ingest import shard_read
from services.ingest.shard_read import ShardRead
from tests.data.bad_inputs import good_jpeg


def _images(n: int, seed: int = 0) -> list[tuple[str, bytes, str]]:
    return [(f"i{seed}_{k:03d}", good_jpeg(40, 36, seed=seed * 50 + k), "jpg") for k in range(n)]


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    write_webdataset_shards(_images(9), tmp_path / "tars", 3)  # 00000..00002.tar
    write_parquet_shards(_images(4, 1), tmp_path / "tables", 2)  # 00000..00001.parquet
    (tmp_path / "tables" / "notes.txt").write_text("not a shard")
    (tmp_path / "tars" / ".00009.tar.tmp").write_bytes(b"being written")
    return tmp_path


def _listed(spec: FeedSpec) -> list[str]:
    return sorted(ShardSource(spec).list_shards())


def test_each_local_form_lists_its_shards(shard_dir: Path) -> None:
    tars = [str(shard_dir / "tars" / f"0000{i}.tar") for i in range(3)]
    tables = [str(shard_dir / "tables" / f"0000{i}.parquet") for i in range(2)]
    # A brace pattern: the names that exist (00003..00005 do not).
    assert _listed(FeedSpec(f"{shard_dir}/tars/{{00000..00005}}.tar")) == tars
    assert _listed(FeedSpec(f"{shard_dir}/tars/*.tar")) == tars
    assert _listed(FeedSpec(f"file://{shard_dir}/tables/*.parquet")) == tables
    assert _listed(FeedSpec(tars[1])) == [tars[1]]
    # kind shards: a folder (any depth, hidden files left out), one Parquet table, a list.
    assert _listed(FeedSpec(str(shard_dir), kind="shards")) == sorted(tables + tars)
    assert _listed(FeedSpec(tables[0], kind="shards")) == [tables[0]]
    listing = shard_dir / "list.txt"
    listing.write_text(f"# shards\n\ntars/{{00000..00001}}.tar\n{tables[1]}\n")
    assert _listed(FeedSpec(str(listing), kind="shards")) == sorted([*tars[:2], tables[1]])


def test_listing_refreshes_and_a_vanished_file_is_left_out(shard_dir: Path) -> None:
    """The list is a feed's pool: drawn with replacement, a shard found gone is out of it at
    once, and the next listing (every refresh_seconds; here by hand) brings new ones in."""
    source = ShardSource(FeedSpec(f"{shard_dir}/tars/*.tar", refresh_seconds=300))
    rng = random.Random(0)
    try:
        first = sorted(set(source.sample(100, rng)))  # waits for the first listing
        assert len(first) == 3
        write_webdataset_shards(_images(6, 2), shard_dir / "more", 3)
        (shard_dir / "more" / "00000.tar").rename(shard_dir / "tars" / "00003.tar")
        Path(first[0]).unlink()
        with pytest.raises(FileNotFoundError):
            source.open(first[0])
        assert set(source.sample(100, rng)) == set(first[1:])  # gone at once
        source.refresh_now()  # what the refresher does every refresh_seconds
        assert set(source.sample(100, rng)) == {*first[1:],
                                                 str(shard_dir / "tars" / "00003.tar")}
        assert source.stats()["listings"] == 2 and source.stats()["vanished"] == 1
    finally:
        source.close()


def test_read_task_pickles_and_yields_small_blocks_of_the_read_schema(shard_dir: Path) -> None:
    read = ShardRead(FeedSpec(f"{shard_dir}/tars/*.tar", shuffle_buffer=4), block_rows=2,
                     max_object_bytes=10**6, block_bytes=10**6)
    blocks = pickle.loads(pickle.dumps(read))()
    tables = list(itertools.islice(blocks, 10))
    blocks.close()
    assert [t.num_rows for t in tables] == [2] * 10
    assert tables[0].column_names == ["key", "data", "reason"]
    assert all(r == "" for t in tables for r in t.column("reason").to_pylist())
    # block_bytes closes a block before block_rows.
    small = ShardRead(read.spec, block_rows=100, max_object_bytes=10**6, block_bytes=1)()
    assert next(small).num_rows == 1
    small.close()


def test_an_empty_list_pauses_and_hands_out_what_it_has(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:  # shards appear while the task waits
            write_webdataset_shards(_images(3), folder, 3)

    monkeypatch.setattr(shard_read.time, "sleep", pause)
    # An empty listing is a failed refresh, made again within refresh_seconds; a draw waits
    # the retry budget for a first shard, then the task pauses.
    spec = FeedSpec(str(folder), kind="shards", shuffle_buffer=0, refresh_seconds=0.05,
                    retry_budget_s=0.2)
    read = ShardRead(spec, block_rows=3,
                     max_object_bytes=10**6, block_bytes=10**6)
    blocks = read()
    first = next(blocks)
    blocks.close()
    assert len(pauses) == 2 and first.num_rows == 3
