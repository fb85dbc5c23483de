"""The shard feed on the real S3 server (moto_server behind the fault proxy, whose per-operation
counters are the server's view of the requests): WebDataset tars and Parquet tables read through
the shard read task (services.ingest.shard_read) and its source (services.feed.shards.source):
shards drawn at random with replacement, a bounded shuffle buffer, new shards picked up by the
refresh, damaged shards and members counted while the rest is used, vanished shards skipped."""

from __future__ import annotations

import io
import random
import tarfile
import time
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

import pytest

from seer_core.config import config_from_dict
from services.feed import FeedSpec
from services.feed.requests import REQUESTS
from services.feed.shards import ShardSample, ShardVisitor
from services.feed.shards.source import ShardSource
from services.images.shards import write_parquet_shards, write_webdataset_shards
from services.ingest.crop import Cropper
from services.ingest.shard_read import ShardRead
from services.metrics import REGISTRY
from tests.data.bad_inputs import good_jpeg, html_error_page
from tests.s3server import FaultProxy, put_objects


def _images(n: int, seed: int) -> list[tuple[str, bytes, str]]:
    return [(f"s{seed}_{i:03d}", good_jpeg(48 + i % 5, 40, seed=seed * 100 + i), "jpg")
            for i in range(n)]


def _put_shards(client: Any, bucket: str, prefix: str, tmp: Path, shards: int, per: int,
                kind: str = "tar", first: int = 0, rows_per_group: int | None = None
                ) -> dict[str, bytes]:
    """Writes ``shards`` shards of ``per`` images under ``prefix`` (numbered from ``first``);
    returns image bytes by the key the reader gives them."""
    expected: dict[str, bytes] = {}
    for n in range(first, first + shards):
        images = _images(per, n)
        out = tmp / f"{kind}-{n}"
        if kind == "tar":
            [path] = write_webdataset_shards(images, out, per)
        else:
            [path] = write_parquet_shards(images, out, per, rows_per_group=rows_per_group)
        name = f"{prefix}{n:05d}.{kind}"
        put_objects(client, bucket, {name: path.read_bytes()})
        for row, (key, data, ext) in enumerate(images):
            if kind == "tar":
                expected[f"s3://{bucket}/{name}#{key}.{ext}"] = data
            else:
                group, at = divmod(row, rows_per_group or per)
                expected[f"s3://{bucket}/{name}#{group}:{at}"] = data
    return expected


def _spec(uri: str, proxy: FaultProxy, **kwargs: Any) -> FeedSpec:
    options: dict[str, Any] = {"refresh_seconds": 300.0, "retry_budget_s": 2.0,
                               "fetch_timeout_s": 5.0, "max_attempts": 2, "shuffle_buffer": 0}
    return FeedSpec(uri, endpoint_url=proxy.endpoint_url, **{**options, **kwargs})


def _rows(read: ShardRead) -> Iterator[ShardSample]:
    """The read task's rows, one at a time (its blocks flattened); close() ends the task."""
    for table in read():
        for key, data, reason in zip(*(table.column(c).to_pylist()
                                       for c in ("key", "data", "reason")), strict=True):
            yield ShardSample(key, None if reason else data, reason)


def _take(read: ShardRead, n: int) -> list[ShardSample]:
    rows = _rows(read)
    try:
        return list(islice(rows, n))
    finally:
        rows.close()


def _shard(key: str) -> str:
    return key.split("#", 1)[0]


def _requests(op: str) -> float:
    REQUESTS.ready()
    return REGISTRY.get_sample_value("seer_feed_requests_total", {"op": op}) or 0.0


def test_tar_shards_of_a_brace_pattern_are_drawn_with_replacement_and_never_listed(
        s3_client: Any, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    expected = _put_shards(s3_client, s3_bucket, "laion/", tmp_path, shards=4, per=3)
    uri = f"s3://{s3_bucket}/laion/{{00000..00003}}.tar"
    read = ShardRead(_spec(uri, fault_proxy), block_rows=3, max_object_bytes=10**6,
                     block_bytes=10**6)
    gets_before = _requests("GET")
    rows = _take(read, 72)  # 24 whole visits of 3 images (no shuffle buffer)
    assert all(r.reason == "" and r.data == expected[r.key] for r in rows)
    visits = [_shard(rows[i].key) for i in range(0, 72, 3)]
    assert all(_shard(r.key) == v for i, v in enumerate(visits) for r in rows[3 * i:3 * i + 3])
    assert len(set(visits)) >= 3
    # With replacement: a shard comes back before every other one was read (24 visits of 4
    # shards in 6 runs of 4 without a repeat: odds 1 in 1.5 million).
    assert any(len(set(visits[i:i + 4])) < 4 for i in range(0, 24, 4))
    # One streaming GET a visit; the pattern is the list: no LIST, no HEAD.
    assert fault_proxy.ops["GET"] == 24 and fault_proxy.ops["LIST"] == fault_proxy.ops["HEAD"] == 0
    assert _requests("GET") - gets_before == 24  # the feed's own counter agrees


def test_parquet_tables_of_a_glob_are_listed_once_and_read_by_ranged_gets(
        s3_client: Any, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    expected = _put_shards(s3_client, s3_bucket, "tables/", tmp_path, shards=3, per=4,
                           kind="parquet", rows_per_group=2)
    deeper = _put_shards(s3_client, s3_bucket, "tables/old/", tmp_path, shards=1, per=2,
                         kind="parquet", first=7)
    put_objects(s3_client, s3_bucket, {"tables/README.txt": b"not a shard"})
    read = ShardRead(_spec(f"s3://{s3_bucket}/tables/*.parquet", fault_proxy), block_rows=4,
                     max_object_bytes=10**6, block_bytes=10**6)
    rows = _take(read, 24)  # 6 whole visits of 4 rows
    assert all(r.reason == "" and r.data == expected[r.key] for r in rows)
    assert not any(r.key in deeper for r in rows)  # '*' does not cross a '/'
    assert {_shard(r.key).rsplit("/", 1)[1] for r in rows} <= {f"0000{i}.parquet"
                                                                for i in range(3)}
    # One listing; a HEAD for the size and one ranged GET (a table under a block) per visit.
    assert fault_proxy.ops["LIST"] == 1
    assert fault_proxy.ops["HEAD"] == fault_proxy.ops["GET"] == 6


def test_shuffle_buffer_is_bounded_and_mixes_shards(s3_client: Any, s3_bucket: str,
                                                    fault_proxy: FaultProxy,
                                                    tmp_path: Path) -> None:
    _put_shards(s3_client, s3_bucket, "mix/", tmp_path, shards=4, per=5)
    source = ShardSource(_spec(f"s3://{s3_bucket}/mix/*.tar", fault_proxy))

    def run(capacity: int) -> list[str]:
        rng = random.Random(3)
        visitor = ShardVisitor(lambda: source.sample(1, rng)[0], source.open, rng,
                               shuffle_buffer=capacity)
        out = []
        for sample in islice(visitor, 60):
            # Bounded: what was read and not handed out is in the buffer, never more than it.
            assert len(visitor.buffer) <= capacity
            out.append(sample.key)
            assert visitor.stats()["images"] - len(out) == len(visitor.buffer)
        return [_shard(k) for k in out]

    try:
        plain, mixed = run(0), run(8)
    finally:
        source.close()
    changes = [sum(a != b for a, b in pairwise(shards)) for shards in (plain, mixed)]
    assert changes[0] <= 60 // 5 - 1  # whole visits, one after the other
    assert changes[1] > 2 * changes[0]  # the buffer interleaves shards


def test_new_shards_are_picked_up_after_a_refresh(s3_client: Any, s3_bucket: str,
                                                  fault_proxy: FaultProxy,
                                                  tmp_path: Path) -> None:
    _put_shards(s3_client, s3_bucket, "grow/", tmp_path, shards=2, per=2)
    spec = _spec(f"s3://{s3_bucket}/grow/", fault_proxy, kind="shards", refresh_seconds=0.5)
    # The listing is kept until the next refresh (by hand here: refresh_seconds 300).
    source = ShardSource(replace(spec, refresh_seconds=300.0))
    rng = random.Random(0)
    try:
        drawn = {n.rsplit("/", 1)[1] for n in source.sample(50, rng)}
        assert drawn == {"00000.tar", "00001.tar"}
        _put_shards(s3_client, s3_bucket, "grow/", tmp_path, shards=1, per=2, first=2)
        assert len(set(source.sample(50, rng))) == 2 and fault_proxy.ops["LIST"] == 1
        source.refresh_now()
        assert len(set(source.sample(50, rng))) == 3 and fault_proxy.ops["LIST"] == 2
    finally:
        source.close()
    # Through the read task, in real time: a shard put while it runs is drawn.
    rows = _rows(ShardRead(spec, block_rows=2, max_object_bytes=10**6, block_bytes=10**6))
    try:
        first = list(islice(rows, 8))
        assert {_shard(r.key).rsplit("/", 1)[1] for r in first} <= {
            "00000.tar", "00001.tar", "00002.tar"}
        late = _put_shards(s3_client, s3_bucket, "grow/", tmp_path, shards=1, per=2, first=3)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if next(rows).key in late:
                break
        else:
            pytest.fail("a shard put while the read task ran was never drawn")
    finally:
        rows.close()


def test_a_truncated_tar_and_a_corrupt_member_are_counted_and_the_rest_is_used(
        s3_client: Any, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    good = _images(4, 1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, data in [(f"{k}.jpg", d) for k, d, _ in good[:2]] + [
                ("page.jpg", html_error_page())] + [(f"{k}.jpg", d) for k, d, _ in good[2:]]:
            info = tarfile.TarInfo(key)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = buf.getvalue()
    [tail] = write_webdataset_shards(_images(4, 2), tmp_path / "cut", 4)
    cut = tail.read_bytes()
    # Cut inside the third image: two whole members (each with its .json sidecar) survive.
    third = cut.index(_images(4, 2)[2][1])
    put_objects(s3_client, s3_bucket, {"d/a.tar": whole, "d/b.tar": cut[:third + 50]})
    read = ShardRead(_spec(f"s3://{s3_bucket}/d/{{a,b}}.tar", fault_proxy), block_rows=4,
                     max_object_bytes=10**6, block_bytes=10**6)
    rows = _take(read, 80)  # ~20 visits: both shards drawn (odds they are not: 1 in 500,000)
    a, b = f"s3://{s3_bucket}/d/a.tar", f"s3://{s3_bucket}/d/b.tar"
    assert {_shard(r.key) for r in rows} == {a, b}
    cfg = config_from_dict({"augment": {"global_size": 32, "local_size": 16, "n_local": 2}})
    result = Cropper(cfg, seed=0).process_fetched(rows)
    # The cut is charged to the member it fell in, counted as the shard's damage.
    cut_member = f"{b}#{_images(4, 2)[2][0]}.jpg"
    assert set(result.rejected) == {(f"{a}#page.jpg", "not_image"), (cut_member, "bad_shard")}
    used = set(result.keys)
    assert used == {f"{a}#{k}.jpg" for k, _, _ in good} | {
        f"{b}#{k}.jpg" for k, _, _ in _images(2, 2)}


def test_a_body_that_breaks_off_ends_the_visit_as_a_fetch_error(
        s3_client: Any, s3_bucket: str, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    expected = _put_shards(s3_client, s3_bucket, "b/", tmp_path, shards=1, per=6)
    fault_proxy.truncate_next(1, match=r"^GET /[^?]+\.tar")
    read = ShardRead(_spec(f"s3://{s3_bucket}/b/00000.tar", fault_proxy), block_rows=1,
                     max_object_bytes=10**6, block_bytes=10**6)
    rows = _take(read, 20)
    first_fail = next(i for i, r in enumerate(rows) if r.reason)
    assert rows[first_fail].reason == "fetch_error" and first_fail < 6  # the half that came
    assert all(r.data == expected[r.key] for r in rows[:first_fail])
    after = rows[first_fail + 1:]  # the next visits read the whole shard again
    assert len(after) >= 12 and all(r.reason == "" and r.data == expected[r.key] for r in after)


def test_a_vanished_shard_is_skipped_and_counted(s3_client: Any, s3_bucket: str,
                                                 fault_proxy: FaultProxy,
                                                 tmp_path: Path) -> None:
    expected = _put_shards(s3_client, s3_bucket, "v/", tmp_path, shards=3, per=2)
    s3_client.delete_object(Bucket=s3_bucket, Key="v/00001.tar")  # in the pattern, not there
    gone = f"s3://{s3_bucket}/v/00001.tar"
    read = ShardRead(_spec(f"s3://{s3_bucket}/v/{{00000..00002}}.tar", fault_proxy),
                     block_rows=2, max_object_bytes=10**6, block_bytes=10**6)
    rows = _take(read, 80)  # ~40 visits: 00001 is drawn (odds it is not: 1 in 10 million)
    # Once found gone, it is not drawn again until the next listing (refresh_seconds=300).
    assert [r for r in rows if r.reason] == [ShardSample(gone, None, "vanished")]
    assert all(r.data == expected[r.key] for r in rows if not r.reason)
    # Listed by a prefix, then deleted: the visitor counts it, and the list drops it.
    source = ShardSource(_spec(f"s3://{s3_bucket}/v/", fault_proxy, kind="shards"))
    rng = random.Random(0)
    try:
        put_objects(s3_client, s3_bucket, {"v/00001.tar": b"soon gone"})
        assert gone in source.sample(50, rng)
        s3_client.delete_object(Bucket=s3_bucket, Key="v/00001.tar")
        visitor = ShardVisitor(lambda: gone, source.open, rng, shuffle_buffer=0)
        assert next(iter(visitor)) == ShardSample(gone, None, "vanished")
        assert visitor.stats()["vanished"] == 1
        left = set(source.sample(50, rng))
        assert gone not in left and len(left) == 2
    finally:
        source.close()
