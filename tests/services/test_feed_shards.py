"""Shard feeds without a store: brace patterns, the tar and Parquet readers (bad input becomes a
counted sample, never an exception), the ranged reader's GET count, the shuffle buffer and the
endless visitor. Shards are written by services.images.shards from small seeded PIL images."""

from __future__ import annotations

import gzip
import io
import random
import tarfile
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from services.feed import FeedEmpty, FetchFailed, ObjectVanished
from services.feed.shards import (
    MAX_SHARD_NAMES,
    RangedReader,
    ShardSample,
    ShardVisitor,
    ShuffleBuffer,
    expand_shard_pattern,
    iter_parquet_samples,
    iter_shard_samples,
    iter_tar_samples,
    shard_format,
)
from services.images.shards import write_parquet_shards, write_webdataset_shards


def _png(rng: np.random.Generator, side: int = 12) -> bytes:
    buf = io.BytesIO()
    pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    return buf.getvalue()


def _samples(n: int, seed: int = 0, prefix: str = "") -> list[tuple[str, bytes, str]]:
    rng = np.random.default_rng(seed)
    return [(f"{prefix}{i:06d}", _png(rng), "png") for i in range(n)]


class _Stream:
    """A forward-only byte stream (like an S3 streaming body): no seek, no tell."""

    def __init__(self, data: bytes) -> None:
        self.buf = io.BytesIO(data)
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        return self.buf.read(n)

    def close(self) -> None:
        self.closed = True


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _reasons(samples: list[ShardSample]) -> list[str]:
    return [s.reason for s in samples]


# --- brace patterns ---------------------------------------------------------------------------


def test_brace_ranges_keep_zero_padding_and_lists_combine() -> None:
    names = expand_shard_pattern("s3://bucket/laion/{00000..41455}.tar")
    assert len(names) == 41456
    assert names[:2] == ["s3://bucket/laion/00000.tar", "s3://bucket/laion/00001.tar"]
    assert names[-1] == "s3://bucket/laion/41455.tar"
    assert expand_shard_pattern("{8..10}") == ["8", "9", "10"]  # no leading zero: no padding
    assert expand_shard_pattern("{0..010}")[:2] == ["000", "001"]
    assert expand_shard_pattern("/data/{train,val}-{0..1}.tar") == [
        "/data/train-0.tar", "/data/train-1.tar", "/data/val-0.tar", "/data/val-1.tar"]
    assert expand_shard_pattern("runs/shards/00000.tar") == ["runs/shards/00000.tar"]


def test_the_pattern_of_numbered_shards_expands_back_to_them() -> None:
    from services.feed.shards.names import shard_pattern

    names = [f"s3://bucket/shards/{i:05d}.tar.gz" for i in range(12)]
    assert shard_pattern(names) == "s3://bucket/shards/{00000..00011}.tar.gz"
    assert expand_shard_pattern(shard_pattern(names)) == names
    assert shard_pattern(["00000.tar", "00001.tar"]) == "./{00000..00001}.tar"


@pytest.mark.parametrize(("pattern", "message"), [
    ("s/{00010..00001}.tar", "reversed"),
    ("s/{a}.tar", "neither a range"),
    ("s/{}.tar", "neither a range"),
    ("s/{1..}.tar", "neither a range"),
    ("s/{a,{b,c}}.tar", "unbalanced or nested"),
    ("s/{0..9.tar", "unbalanced or nested"),
    ("s/0..9}.tar", "unbalanced or nested"),
])
def test_malformed_patterns_name_the_pattern(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        expand_shard_pattern(pattern)
    assert repr(pattern) in str(err.value)


def test_a_pattern_over_the_bound_is_refused_before_it_is_expanded() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more than") as err:
            expand_shard_pattern("s3://b/{00000..99999}/{00000..99999}.tar")  # 10^10 names
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "10,000,000,000" in str(err.value) and peak < 1 << 20
    assert MAX_SHARD_NAMES == 10_000_000


def test_shard_format_by_suffix() -> None:
    assert shard_format("s3://b/00000.tar") == shard_format("/x/0.TAR.GZ") == "tar"
    assert shard_format("s3://b/part-0.parquet") == "parquet"
    with pytest.raises(ValueError, match="not a shard"):
        shard_format("s3://b/image.jpg")


# --- WebDataset tars --------------------------------------------------------------------------


def test_tar_streams_every_image_member_and_skips_sidecars(tmp_path: Path) -> None:
    samples = _samples(7)
    [path] = write_webdataset_shards(samples, tmp_path, 10)
    stream = _Stream(path.read_bytes())  # forward-only: a seek would fail
    out = list(iter_tar_samples(stream, "s3://b/00000.tar"))
    assert [s.key for s in out] == [f"s3://b/00000.tar#{k}.png" for k, _, _ in samples]
    assert [s.data for s in out] == [data for _, data, _ in samples]
    assert set(_reasons(out)) == {""}


def test_tar_members_that_are_not_images_are_skipped_silently() -> None:
    png = _png(np.random.default_rng(1))
    data = _tar_bytes([("a.jpg", png), ("a.json", b"{}"), ("a.txt", b"a cat"), ("a.cls", b"3"),
                       ("b.json", b"{}"), ("b.txt", b"no image for b"),  # a failed download
                       ("c.webp", png), ("c.seg.PNG", png), ("notes.md", b"#")])
    out = list(iter_tar_samples(io.BytesIO(data), "t"))
    assert [s.key for s in out] == ["t#a.jpg", "t#c.webp", "t#c.seg.PNG"]
    # The feed's extension list decides what an image is.
    only_webp = list(iter_tar_samples(io.BytesIO(data), "t", extensions=(".webp",)))
    assert [s.key for s in only_webp] == ["t#c.webp"]


def test_a_tar_with_no_image_is_one_bad_shard() -> None:
    data = _tar_bytes([("a.json", b"{}"), ("a.txt", b"caption")])
    assert list(iter_tar_samples(io.BytesIO(data), "t")) == [ShardSample("t", None, "bad_shard")]


def _cut_points(data: bytes) -> dict[str, int]:
    """Offsets at which to truncate a 4-image tar (each image followed by its .json)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    third_image = members[4]
    last = members[-1]
    end_of_last = last.offset_data + (last.size + 511) // 512 * 512
    return {"in the third image's data": third_image.offset_data + 10,
            "in the third image's header": third_image.offset + 100,
            "at the third image's header": third_image.offset,
            "before the end-of-archive block": end_of_last}


@pytest.mark.parametrize("where", ["in the third image's data", "in the third image's header",
                                   "at the third image's header",
                                   "before the end-of-archive block"])
def test_a_truncated_tar_yields_its_good_members_then_one_bad_shard(tmp_path: Path,
                                                                    where: str) -> None:
    [path] = write_webdataset_shards(_samples(4), tmp_path, 4)
    data = path.read_bytes()
    cut = _cut_points(data)[where]
    out = list(iter_tar_samples(_Stream(data[:cut]), "t"))
    good = 4 if where == "before the end-of-archive block" else 2
    assert _reasons(out) == [""] * good + ["bad_shard"]
    assert [s.data for s in out[:good]] == [d for _, d, _ in _samples(4)[:good]]


def test_a_garbled_header_mid_tar_is_a_bad_shard_after_the_good_members(tmp_path: Path) -> None:
    [path] = write_webdataset_shards(_samples(4), tmp_path, 4)
    data = bytearray(path.read_bytes())
    third = _cut_points(bytes(data))["at the third image's header"]
    data[third:third + 512] = bytes(random.Random(0).randbytes(512))
    assert _reasons(list(iter_tar_samples(io.BytesIO(bytes(data)), "t"))) == ["", "", "bad_shard"]


def test_not_a_tar_at_all_is_one_bad_shard() -> None:
    out = list(iter_tar_samples(io.BytesIO(b"<html>not found</html>" * 40), "t"))
    assert out == [ShardSample("t", None, "bad_shard")]
    assert _reasons(list(iter_tar_samples(io.BytesIO(b""), "t"))) == ["bad_shard"]


def test_an_oversized_member_is_too_large_and_never_held(tmp_path: Path) -> None:
    big = random.Random(3).randbytes(16 << 20)
    small = _png(np.random.default_rng(2))
    path = tmp_path / "big.tar"
    path.write_bytes(_tar_bytes([("a.png", small), ("huge.jpg", big), ("b.png", small)]))
    del big
    tracemalloc.start()
    try:
        with path.open("rb") as f:
            out = [(s.key, s.data is not None, s.reason)
                   for s in iter_tar_samples(f, "t", max_member_bytes=1 << 20)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == [("t#a.png", True, ""), ("t#huge.jpg", False, "too_large"),
                   ("t#b.png", True, "")]
    assert peak < 2 << 20, peak  # the 16 MiB member was read past in blocks


def test_a_gzipped_tar_streams_too() -> None:
    samples = _samples(3)
    data = gzip.compress(_tar_bytes([(f"{k}.{e}", d) for k, d, e in samples]), mtime=0)
    out = list(iter_shard_samples(_Stream(data), "s/0.tar.gz"))
    assert [s.data for s in out] == [d for _, d, _ in samples]
    cut = list(iter_shard_samples(_Stream(data[:len(data) // 2]), "s/0.tar.gz"))
    assert cut[-1].reason == "bad_shard" and set(_reasons(cut[:-1])) <= {""}


def test_a_store_error_mid_stream_is_a_fetch_error_after_the_good_members(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    samples = [(f"{i:06d}", _png(rng, side=64), "png") for i in range(4)]  # ~12 kB each
    [path] = write_webdataset_shards(samples, tmp_path, 4)
    data = path.read_bytes()

    class Failing(_Stream):
        def read(self, n: int = -1) -> bytes:
            if self.buf.tell() > len(data) // 2:  # the connection drops halfway
                raise TimeoutError("read timed out")
            return super().read(n)

    out = list(iter_tar_samples(Failing(data), "t"))
    assert _reasons(out) == ["", "", "fetch_error"]
    assert [s.data for s in out[:2]] == [d for _, d, _ in samples[:2]]


# --- Parquet tables ---------------------------------------------------------------------------


def test_parquet_struct_cells_row_group_by_row_group(tmp_path: Path) -> None:
    samples = _samples(10)
    [path] = write_parquet_shards(samples, tmp_path, 10, rows_per_group=4)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    with path.open("rb") as f:
        out = list(iter_parquet_samples(f, "p"))
    assert [s.key for s in out] == ([f"p#0:{r}" for r in range(4)] + [f"p#1:{r}" for r in range(4)]
                                    + ["p#2:0", "p#2:1"])
    assert [s.data for s in out] == [d for _, d, _ in samples]


def _table_bytes(table: pa.Table, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


def test_parquet_binary_column_and_the_column_default() -> None:
    images = [d for _, d, _ in _samples(3)]
    jpg = _table_bytes(pa.table({"key": ["a", "b", "c"], "jpg": pa.array(images, pa.binary())}))
    assert [s.data for s in iter_parquet_samples(io.BytesIO(jpg), "p")] == images
    both = _table_bytes(pa.table({"jpg": pa.array([b"x"] * 3, pa.binary()),
                                  "image": pa.array(images, pa.large_binary())}))
    assert [s.data for s in iter_parquet_samples(io.BytesIO(both), "p")] == images  # image first
    named = list(iter_parquet_samples(io.BytesIO(both), "p", image_column="jpg"))
    assert [s.data for s in named] == [b"x"] * 3


def test_parquet_null_cells_are_not_image_and_too_large_cells_are_skipped() -> None:
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": b"ok", "path": "a"}, None, {"bytes": None, "path": "c"},
             {"bytes": b"x" * 100, "path": "d"}]
    data = _table_bytes(pa.table({"image": pa.array(cells, struct)}))
    out = list(iter_parquet_samples(io.BytesIO(data), "p", max_member_bytes=50))
    assert out == [ShardSample("p#0:0", b"ok"), ShardSample("p#0:1", None, "not_image"),
                   ShardSample("p#0:2", None, "not_image"), ShardSample("p#0:3", None, "too_large")]
    binary = _table_bytes(pa.table({"image": pa.array([None, b"ok"], pa.binary())}))
    assert _reasons(list(iter_parquet_samples(io.BytesIO(binary), "p"))) == ["not_image", ""]


@pytest.mark.parametrize(("table", "column"), [
    (pa.table({"key": ["a"], "pixels": pa.array([b"x"], pa.binary())}), None),  # no default
    (pa.table({"key": ["a"], "image": pa.array([b"x"], pa.binary())}), "jpeg"),  # named, absent
    (pa.table({"image": pa.array(["not bytes"], pa.string())}), None),  # not binary
    (pa.table({"image": pa.array([{"path": "a"}], pa.struct([("path", pa.string())]))}), None),
    (pa.table({"image": pa.array([], pa.binary())}), None),  # no rows
])
def test_parquet_without_a_usable_image_column_is_one_bad_shard(table: pa.Table,
                                                                column: str | None) -> None:
    out = list(iter_parquet_samples(io.BytesIO(_table_bytes(table)), "p", image_column=column))
    assert out == [ShardSample("p", None, "bad_shard")]


def test_an_unreadable_footer_is_one_bad_shard(tmp_path: Path) -> None:
    [path] = write_parquet_shards(_samples(4), tmp_path, 4)
    data = path.read_bytes()
    for broken in (data[:len(data) - 20], b"PAR1" + b"\0" * 100, b""):
        assert list(iter_parquet_samples(io.BytesIO(broken), "p")) == [
            ShardSample("p", None, "bad_shard")]


def test_a_corrupt_row_group_costs_that_group_only(tmp_path: Path) -> None:
    samples = _samples(9)
    [path] = write_parquet_shards(samples, tmp_path, 9, rows_per_group=3)
    data = bytearray(path.read_bytes())
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(1)  # image.bytes of group 1
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data[start:start + 16] = b"\xff" * 16  # the page header no longer parses
    out = list(iter_parquet_samples(io.BytesIO(bytes(data)), "p"))
    assert [(s.key, s.reason) for s in out] == (
        [(f"p#0:{r}", "") for r in range(3)] + [("p#1", "bad_shard")]
        + [(f"p#2:{r}", "") for r in range(3)])
    assert [s.data for s in out if s.data] == [d for _, d, _ in samples[:3] + samples[6:]]


def test_a_flipped_image_byte_is_caught_when_the_writer_stored_checksums() -> None:
    images = [b"\x89PNG" + bytes(range(200))] * 4
    data = bytearray(_table_bytes(pa.table({"image": pa.array(images, pa.binary())}),
                                  row_group_size=2, write_page_checksum=True,
                                  compression="none", use_dictionary=False,
                                  write_statistics=False))  # no copy of a value in the footer
    at = data.rfind(images[0])  # the last row group's last image
    data[at + 100] ^= 0xFF
    assert _reasons(list(iter_parquet_samples(io.BytesIO(bytes(data)), "p"))) == [
        "", "", "bad_shard"]


def test_a_store_error_in_a_ranged_parquet_read_is_a_fetch_error(tmp_path: Path) -> None:
    [path] = write_parquet_shards(_samples(4), tmp_path, 4)
    data = path.read_bytes()

    def vanish(start: int, end: int) -> bytes:
        raise ObjectVanished("p")

    def fail_after_footer(start: int, end: int) -> bytes:
        if start < len(data) - 2000:
            raise FetchFailed("p", "SlowDown", 8, 120.0)
        return data[start:end + 1]

    out = list(iter_parquet_samples(RangedReader(vanish, len(data)), "p"))
    assert out == [ShardSample("p", None, "vanished")]
    reader = RangedReader(fail_after_footer, len(data), block_bytes=1024)
    assert _reasons(list(iter_parquet_samples(reader, "p"))) == ["fetch_error"]


# --- RangedReader -----------------------------------------------------------------------------


def _counted(data: bytes) -> tuple[Callable[[int, int], bytes], list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []

    def read_range(start: int, end: int) -> bytes:
        assert 0 <= start <= end < len(data)
        calls.append((start, end))
        return data[start:end + 1]

    return read_range, calls


def test_ranged_reader_reads_exact_bytes_at_random_offsets() -> None:
    rng = random.Random(7)
    data = rng.randbytes(3 * 1000 + 17)
    read_range, calls = _counted(data)
    reader = RangedReader(read_range, len(data), block_bytes=1000)
    for _ in range(300):
        pos, n = rng.randrange(len(data) + 10), rng.choice([0, 1, 7, 100, 999, 1000, 2500, -1])
        assert reader.seek(pos) == pos
        want = data[pos:] if n < 0 else data[pos:pos + n]
        assert reader.read(n) == want and reader.tell() == pos + len(want)
    assert reader.seek(-5, 2) == len(data) - 5 and reader.read() == data[-5:]
    assert reader.seek(-2, 1) == len(data) - 2 and reader.read(10) == data[-2:]
    reader.seek(10)
    buf = bytearray(20)
    assert reader.readinto(buf) == 20 and bytes(buf) == data[10:30]
    assert reader.range_calls == len(calls) and reader.bytes_fetched == sum(
        e - s + 1 for s, e in calls)
    with pytest.raises(ValueError, match="negative"):
        reader.seek(-1)
    reader.close()
    with pytest.raises(ValueError):
        reader.read(1)


def test_ranged_reader_serves_small_reads_from_one_block() -> None:
    data = bytes(range(256)) * 100  # 25,600 bytes
    read_range, calls = _counted(data)
    reader = RangedReader(read_range, len(data), block_bytes=4096)
    reader.seek(-8, 2)
    reader.read(8)  # a footer length: the block ends at the end of the file
    reader.seek(-4000, 2)
    reader.read(3000)
    assert calls == [(len(data) - 4096, len(data) - 1)]
    reader.seek(0)
    reader.read(10_000)  # larger than a block: exactly what was asked
    assert calls[-1] == (0, 9999)


def test_ranged_reader_refuses_a_short_answer() -> None:
    reader = RangedReader(lambda start, end: b"short", 100)
    with pytest.raises(OSError, match="changed"):
        reader.read(50)


def test_a_parquet_shard_costs_few_ranged_gets(tmp_path: Path) -> None:
    rng = random.Random(11)
    samples = [(f"{i:06d}", rng.randbytes(60_000), "jpg") for i in range(60)]  # ~3.6 MB
    [path] = write_parquet_shards(samples, tmp_path, 60, rows_per_group=15)
    data = path.read_bytes()
    reader = RangedReader(_counted(data)[0], len(data))
    out = list(iter_parquet_samples(reader, "p"))
    assert [s.data for s in out] == [d for _, d, _ in samples]
    assert reader.range_calls <= 1 + 4  # the footer, then one per row group's image chunk
    assert reader.bytes_fetched < 1.5 * len(data)


def test_a_small_parquet_shard_is_one_ranged_get(tmp_path: Path) -> None:
    samples = _samples(200)  # ~200 kB in 20 row groups: pyarrow reads each page on its own
    [path] = write_parquet_shards(samples, tmp_path, 200, rows_per_group=10)
    data = path.read_bytes()
    per_read = RangedReader(_counted(data)[0], len(data), block_bytes=1)  # a GET per read
    assert [s.data for s in iter_parquet_samples(per_read, "p")] == [
        d for _, d, _ in samples]
    reader = RangedReader(_counted(data)[0], len(data))
    assert len(list(iter_parquet_samples(reader, "p"))) == 200
    assert reader.range_calls == 1 and per_read.range_calls > 20


# --- shuffle buffer ---------------------------------------------------------------------------


def test_shuffle_buffer_is_bounded_and_hands_out_every_item_once() -> None:
    buffer: ShuffleBuffer[int] = ShuffleBuffer(50, random.Random(0))
    out = []
    for item in range(1000):
        released = buffer.add(item)
        assert len(buffer) <= 50
        if released is not None:
            out.append(released)
    assert len(out) == 950 and len(buffer) == 50
    out += list(buffer.drain())
    assert sorted(out) == list(range(1000)) and len(buffer) == 0


def test_shuffle_buffer_mixes_far_beyond_neighbours() -> None:
    buffer: ShuffleBuffer[int] = ShuffleBuffer(100, random.Random(1))
    out = [x for item in range(2000) if (x := buffer.add(item)) is not None]
    out += list(buffer.drain())
    displacement = [abs(pos - item) for pos, item in enumerate(out)]
    assert sum(displacement) / len(out) > 50  # an item moves ~capacity places on average
    assert sum(abs(a - b) == 1 for a, b in pairwise(out)) < len(out) * 0.05


def test_shuffle_buffer_of_zero_passes_through() -> None:
    buffer: ShuffleBuffer[str] = ShuffleBuffer(0, random.Random(0))
    assert [buffer.add(x) for x in "abc"] == ["a", "b", "c"] and list(buffer.drain()) == []
    with pytest.raises(ValueError, match=">= 0"):
        ShuffleBuffer(-1, random.Random(0))


# --- the endless visitor ----------------------------------------------------------------------


class _Shards:
    """Tar shards in memory, opened as forward-only streams; records every open and close."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.data = {name: self.tar(name, n) for name, n in sizes.items()}
        self.opened: list[str] = []
        self.streams: list[_Stream] = []

    @staticmethod
    def tar(name: str, n: int) -> bytes:
        stem = name.rsplit("/", 1)[-1].split(".")[0]
        return _tar_bytes([(f"{stem}_{i}.png", f"{name}:{i}".encode()) for i in range(n)])

    def open(self, name: str) -> _Stream:
        self.opened.append(name)
        if name not in self.data:
            raise FileNotFoundError(name)
        self.streams.append(_Stream(self.data[name]))
        return self.streams[-1]


def _shard_of(sample: ShardSample) -> str:
    return sample.key.split("#", 1)[0]


def _draw(names: Callable[[], Sequence[str]], rng: random.Random) -> Callable[[], str]:
    """A visitor's ``draw`` over a list the test may change, as the owner's pool draws:
    uniform with replacement, FeedEmpty when the list is empty."""

    def draw() -> str:
        listed = names()
        if not listed:
            raise FeedEmpty("no shards listed")
        return rng.choice(listed)

    return draw


def test_visitor_draws_shards_with_replacement_and_reads_them_whole() -> None:
    shards = _Shards({f"s/{i}.tar": 5 for i in range(3)})
    rng = random.Random(0)
    visitor = ShardVisitor(_draw(lambda: list(shards.data), rng), shards.open, rng,
                           shuffle_buffer=0)
    out = list(islice(visitor, 150))
    assert set(_reasons(out)) == {""}
    assert len(shards.opened) == 30 and set(shards.opened) == set(shards.data)
    assert visitor.stats()["visits"] == 30
    # With replacement: some shard is drawn twice in a row somewhere among 30 draws of 3.
    assert any(a == b for a, b in pairwise(shards.opened))
    # Whole visits without a buffer: runs of 5 from the shard just opened.
    assert [_shard_of(s) for s in out[:5]] == [shards.opened[0]] * 5
    assert all(s.closed for s in shards.streams[:-1])


def test_visitor_moves_on_after_images_per_visit() -> None:
    shards = _Shards({"s/a.tar": 50, "s/b.tar": 50})
    rng = random.Random(2)
    visitor = ShardVisitor(_draw(lambda: list(shards.data), rng), shards.open, rng,
                           shuffle_buffer=0, images_per_visit=3)
    out = list(islice(visitor, 30))
    assert len(shards.opened) == 10 and visitor.stats()["images"] == 30
    for visit, name in enumerate(shards.opened):
        assert {_shard_of(s) for s in out[3 * visit:3 * visit + 3]} == {name}
    assert all(s.closed for s in shards.streams)  # left mid-shard: closed all the same
    with pytest.raises(ValueError, match="images_per_visit"):
        ShardVisitor(lambda: "s/a.tar", shards.open, random.Random(0), shuffle_buffer=0,
                     images_per_visit=0)


def test_visitor_mixes_shards_through_its_buffer() -> None:
    shards = _Shards({f"s/{i}.tar": 20 for i in range(8)})
    rng = random.Random(3)
    visitor = ShardVisitor(_draw(lambda: list(shards.data), rng), shards.open, rng,
                           shuffle_buffer=64)
    out = list(islice(visitor, 400))
    same_as_next = sum(_shard_of(a) == _shard_of(b) for a, b in pairwise(out))
    assert same_as_next < len(out) * 0.4  # unbuffered, 19 of every 20 neighbours would match
    assert visitor.stats()["buffered"] == 64
    assert len(set(s.key for s in out)) > 100


def test_visitor_counts_and_skips_vanished_shards_and_picks_up_new_ones() -> None:
    shards = _Shards({"s/a.tar": 4, "s/b.tar": 4, "s/new.tar": 4})
    listing = ["s/a.tar", "s/b.tar", "s/gone.tar"]
    rng = random.Random(4)
    visitor = ShardVisitor(_draw(lambda: listing, rng), shards.open, rng,
                           shuffle_buffer=2)
    stream = iter(visitor)
    first = list(islice(stream, 60))
    vanished = [s for s in first if s.reason == "vanished"]
    assert vanished and {s.key for s in vanished} == {"s/gone.tar"}
    assert visitor.stats()["vanished"] == len(vanished) == shards.opened.count("s/gone.tar")
    assert all(s.data for s in first if not s.reason)
    assert not any("new" in s.key for s in first)
    listing.append("s/new.tar")  # the listing refreshed
    later = list(islice(stream, 80))
    assert any(_shard_of(s) == "s/new.tar" and s.data for s in later)


def test_visitor_reports_bad_shards_and_store_errors_and_goes_on(tmp_path: Path) -> None:
    paths = write_webdataset_shards(_samples(12), tmp_path, 4)
    paths[1].write_bytes(paths[1].read_bytes()[:1500])  # truncated in its first members

    def opener(name: str) -> io.BufferedReader:
        if name.endswith("flaky.tar"):
            raise FetchFailed(name, "SlowDown", 8, 120.0)
        return open(name, "rb")  # the visitor closes it

    names = [str(p) for p in paths] + [str(tmp_path / "flaky.tar")]
    rng = random.Random(5)
    visitor = ShardVisitor(_draw(lambda: names, rng), opener, rng, shuffle_buffer=4)
    out = list(islice(visitor, 120))
    reasons = Counter(_reasons(out))
    assert reasons["bad_shard"] >= 1 and reasons["fetch_error"] >= 1 and reasons[""] > 60
    assert {_shard_of(s) for s in out if s.reason == "bad_shard"} == {str(paths[1])}
    assert {s.data for s in out if s.data} <= {d for _, d, _ in _samples(12)}


def test_visitor_hands_out_its_buffer_then_raises_when_no_shard_is_listed() -> None:
    shards = _Shards({"s/a.tar": 3})
    listing = ["s/a.tar"]

    def names() -> list[str]:
        if len(shards.opened) == 2:
            listing.clear()
        return listing

    rng = random.Random(6)
    visitor = ShardVisitor(_draw(names, rng), shards.open, rng, shuffle_buffer=100)
    out: list[ShardSample] = []
    with pytest.raises(FeedEmpty, match="no shards"):
        for sample in visitor:
            out.append(sample)
    assert len(out) == 6  # both visits' images, out of the buffer, before the error

