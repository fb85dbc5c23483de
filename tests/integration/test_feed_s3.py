"""S3 and S3-manifest feeds against a real moto_server, with real faults.

Faults are real: a server process stopped and restarted, objects deleted and added behind the
feed's back, 503/500 answers and dropped connections from a proxy on the wire.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.feed import (
    FeedEmpty,
    FeedSpec,
    FetchFailed,
    ObjectTooLarge,
    ObjectVanished,
    open_feed,
)
from services.feed.s3 import S3Feed
from services.s3 import RetryPolicy
from tests.s3server import FaultProxy, MotoServer, make_client, put_objects
from tests.services.test_s3 import max_calls
from tests.waiting import pooled_keys
from tests.waiting import wait_until as _wait

pytestmark = pytest.mark.integration


def wait_until(cond, timeout: float = 15.0) -> bool:
    return _wait(cond, timeout)


@pytest.fixture(autouse=True)
def _no_leaked_refreshers(no_leaked_refreshers: None) -> None:
    """Every test here must stop the refresher threads it starts."""


def s3_spec(bucket: str, endpoint: str, prefix: str = "img/", **kw: Any) -> FeedSpec:
    kw.setdefault("refresh_seconds", 0.1)
    kw.setdefault("retry_budget_s", 5.0)
    return FeedSpec(f"s3://{bucket}/{prefix}", endpoint_url=endpoint, **kw)


def test_small_bucket_fully_listed_and_uniformly_sampled(s3_server, s3_client, s3_bucket):
    keys = [f"img/{i:02d}.jpg" for i in range(12)]
    put_objects(s3_client, s3_bucket, {k: k.encode() for k in keys})
    put_objects(s3_client, s3_bucket, {"img/readme.txt": b"x", "other/x.jpg": b"y"})
    with open_feed(s3_spec(s3_bucket, s3_server.endpoint_url, pool_size=100)) as feed:
        assert isinstance(feed, S3Feed)
        feed.sample(1, random.Random(0), timeout=10)
        assert wait_until(lambda: sorted(pooled_keys(feed)) == keys)
        counts = Counter(feed.sample(12_000, random.Random(1)))
        chi2 = sum((counts[k] - 1000) ** 2 / 1000 for k in keys)
        assert set(counts) == set(keys) and chi2 < 31.3  # 11 d.o.f., p = 0.001
        assert feed.fetch("img/03.jpg") == b"img/03.jpg"
        assert feed.fetch(f"s3://{s3_bucket}/img/04.jpg") == b"img/04.jpg"
        stats = feed.stats()
        assert stats["listings"] >= 1 and stats["fetches"] == 2


def test_pool_bounded_and_moves_over_the_key_space(s3_server, s3_client, s3_bucket):
    keys = [f"img/{i:04d}.jpg" for i in range(400)]
    put_objects(s3_client, s3_bucket, {k: b"" for k in keys})
    seen: set[str] = set()
    spec = s3_spec(s3_bucket, s3_server.endpoint_url, pool_size=50, refresh_seconds=0.02)
    with open_feed(spec) as feed:
        feed.sample(1, random.Random(0), timeout=10)

        def covered() -> bool:
            pool = pooled_keys(feed)
            assert len(pool) <= 50
            seen.update(pool)
            return {int(k[4:8]) // 40 for k in seen} == set(range(10))  # all ten tenths

        assert wait_until(covered, timeout=30), sorted(seen)
        assert feed.stats()["refreshes"] >= 2
        assert len(pooled_keys(feed)) <= 50


def test_added_objects_get_sampled_and_deleted_ones_vanish(s3_server, s3_client, s3_bucket):
    put_objects(s3_client, s3_bucket, {f"img/{i}.jpg": b"a" for i in range(5)})
    with open_feed(s3_spec(s3_bucket, s3_server.endpoint_url, pool_size=100)) as feed:
        assert wait_until(lambda: feed.pool_size() == 5)
        put_objects(s3_client, s3_bucket, {"img/new.jpg": b"new"})
        assert wait_until(lambda: "img/new.jpg" in feed.sample(200, random.Random(0)))
        s3_client.delete_object(Bucket=s3_bucket, Key="img/2.jpg")
        if "img/2.jpg" in pooled_keys(feed):
            try:
                feed.fetch("img/2.jpg")
                raise AssertionError("fetch of a deleted object succeeded")
            except ObjectVanished as exc:
                assert exc.key == "img/2.jpg"
        assert wait_until(lambda: "img/2.jpg" not in pooled_keys(feed))
        # And a refresh does not bring it back.
        time.sleep(0.3)
        assert "img/2.jpg" not in pooled_keys(feed) and len(pooled_keys(feed)) == 5


def test_deleted_after_listing_raises_object_vanished(s3_server, s3_client, s3_bucket):
    put_objects(s3_client, s3_bucket, {"img/a.jpg": b"a", "img/b.jpg": b"b"})
    with open_feed(s3_spec(s3_bucket, s3_server.endpoint_url, refresh_seconds=60)) as feed:
        assert wait_until(lambda: feed.pool_size() == 2)
        s3_client.delete_object(Bucket=s3_bucket, Key="img/a.jpg")
        with pytest.raises(ObjectVanished):
            feed.fetch("img/a.jpg")
        assert pooled_keys(feed) == ["img/b.jpg"]
        assert feed.stats()["vanished"] == 1


def test_throttling_and_5xx_are_retried(s3_client, s3_bucket, fault_proxy: FaultProxy):
    put_objects(s3_client, s3_bucket, {"img/a.jpg": b"payload"})
    spec = s3_spec(s3_bucket, fault_proxy.endpoint_url, refresh_seconds=60)
    with open_feed(spec) as feed:
        feed.sample(1, random.Random(0), timeout=10)
        get = rf"^GET /{s3_bucket}/img/a\.jpg"
        fault_proxy.fail_next(2, 503, "SlowDown", match=get)
        fault_proxy.fail_next(1, 500, "InternalError", match=get)
        fault_proxy.fail_next(1, 429, "TooManyRequests", match=get)
        fault_proxy.drop_next(1, match=get)
        assert feed.fetch("img/a.jpg") == b"payload"
        assert fault_proxy.faults_served == 5
        assert feed.stats()["retries"] == 5


def test_a_body_that_breaks_off_is_read_again(s3_client, s3_bucket, fault_proxy: FaultProxy):
    """botocore retries calls, not a body cut short after the headers: services.s3 does."""
    payload = bytes(range(256)) * 64
    put_objects(s3_client, s3_bucket, {"img/a.jpg": payload})
    with open_feed(s3_spec(s3_bucket, fault_proxy.endpoint_url, refresh_seconds=60)) as feed:
        fault_proxy.truncate_next(2, match=rf"^GET /{s3_bucket}/img/a\.jpg")
        assert feed.fetch("img/a.jpg") == payload
        assert feed.stats()["retries"] == 2 and feed.stats()["fetch_failures"] == 0


def test_listing_throttled_then_recovers(s3_client, s3_bucket, fault_proxy: FaultProxy):
    """Both layers ride out a throttled LIST: botocore sends each call ``max_attempts`` (2)
    times, then the feed's refresher calls again after its short backoff. Two requests a call
    bound botocore's sleeps to under 1 s each (4 requests in one call could sleep up to 1+2+4+8 s
    of botocore's jittered backoff, past any fixed timeout: the test was flaky that way)."""
    put_objects(s3_client, s3_bucket, {"img/a.jpg": b"a"})
    fault_proxy.fail_next(4, 503, "SlowDown", match=r"list-type=2")
    with open_feed(s3_spec(s3_bucket, fault_proxy.endpoint_url, max_attempts=2)) as feed:
        assert feed.sample(2, random.Random(0), timeout=10) == ["img/a.jpg"] * 2
        assert fault_proxy.faults_served == 4
        assert feed.stats()["refresh_errors"] == 2


def test_persistent_5xx_fails_after_the_budget(
    s3_client, s3_bucket, fault_proxy: FaultProxy, monkeypatch, caplog
):
    """botocore sends each GetObject ``max_attempts`` times; seer calls it again until
    ``retry_budget_s`` is spent (services.s3), so the fetch fails after the budget, never
    before, with a bounded number of requests: at most ``max_calls`` calls (6
    for 1.5 s: the backoff floors 0.05+0.1+0.2+0.4+0.8 s reach the budget after 5 sleeps),
    each of 4 requests (botocore's quota, 500 tokens at 14 a retry, lasts the 18 retries).
    On the code before this contract it failed after 4 requests in well under a second."""
    secret = "s3cr3t-VALUE-never-logged"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    put_objects(s3_client, s3_bucket, {"img/a.jpg": b"a"})
    budget, per_call = 1.5, 4
    spec = s3_spec(s3_bucket, fault_proxy.endpoint_url, refresh_seconds=60,
                   max_attempts=per_call, retry_budget_s=budget)
    assert max_calls(RetryPolicy(max_attempts=per_call, budget_s=budget)) == 6
    with caplog.at_level(logging.DEBUG, logger="seer"), open_feed(spec) as feed:
        feed.sample(1, random.Random(0), timeout=10)
        fault_proxy.fail_next(-1, 500, "InternalError", match=rf"^GET /{s3_bucket}/img/a\.jpg")
        t0 = time.monotonic()
        with pytest.raises(FetchFailed) as info:
            feed.fetch("img/a.jpg")
        elapsed = time.monotonic() - t0
        assert budget <= elapsed < budget + 3.0  # the last call starts by the deadline
        requests = fault_proxy.faults_served
        assert requests % per_call == 0 and per_call <= requests <= 6 * per_call
        assert info.value.reason == "InternalError" and info.value.attempts == requests
        assert feed.stats()["fetch_failures"] == 1
        assert feed.stats()["retries"] == requests - 1
    assert secret not in str(info.value)
    assert secret not in caplog.text


def test_server_restart_mid_stream(fresh_s3_server: MotoServer):
    client = make_client(fresh_s3_server.endpoint_url)

    def populate(keys: list[str]) -> None:
        client.create_bucket(Bucket="restart-bucket")
        put_objects(client, "restart-bucket", {k: k.encode() for k in keys})

    populate(["img/a.jpg", "img/b.jpg"])
    spec = s3_spec("restart-bucket", fresh_s3_server.endpoint_url, retry_budget_s=1.0,
                   fetch_timeout_s=2.0, max_attempts=3)
    with open_feed(spec) as feed:
        assert wait_until(lambda: feed.pool_size() == 2)
        fresh_s3_server.stop()
        # Store down: fetches fail after the budget, the pool is kept, nothing crashes.
        t0 = time.monotonic()
        with pytest.raises(FetchFailed):
            feed.fetch("img/a.jpg")
        assert time.monotonic() - t0 < 1.0 + 3.0
        assert wait_until(lambda: feed.stats()["refresh_errors"] >= 1)
        assert sorted(feed.sample(10, random.Random(0))) != []
        assert feed.pool_size() == 2
        fresh_s3_server.start()  # same port, empty: re-create the bucket with new contents
        populate(["img/a.jpg", "img/c.jpg"])
        assert wait_until(lambda: sorted(pooled_keys(feed)) == ["img/a.jpg", "img/c.jpg"])
        assert feed.fetch("img/c.jpg") == b"img/c.jpg"
    client.close()


def test_empty_prefix_raises_feed_empty(s3_server, s3_bucket):
    messages: list[str] = []

    def listed_nothing() -> bool:
        # Asks without waiting, until the first listing has ended (however slow the machine).
        try:
            feed.sample(1, random.Random(0), timeout=0.0)
        except FeedEmpty as exc:
            messages.append(str(exc))
            return "no matching objects" in str(exc)
        raise AssertionError("an empty prefix gave a key")

    with open_feed(s3_spec(s3_bucket, s3_server.endpoint_url)) as feed:
        assert _wait(listed_nothing, 60), messages[-3:]


def parquet_bytes(column: str, values: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({column: values}), buf)
    return buf.getvalue()


def test_parquet_manifest_on_s3_reread_on_change(s3_server, s3_client, s3_bucket):
    put_objects(s3_client, s3_bucket, {"data/x.jpg": b"x", "data/y.jpg": b"y", "data/z": b"z"})
    put_objects(s3_client, s3_bucket,
                {"lists/m.parquet": parquet_bytes("key", ["data/x.jpg", "data/y.jpg"])})
    spec = FeedSpec(f"s3://{s3_bucket}/lists/m.parquet", endpoint_url=s3_server.endpoint_url,
                    refresh_seconds=0.1, retry_budget_s=5.0)
    with open_feed(spec) as feed:
        want = {f"s3://{s3_bucket}/data/x.jpg", f"s3://{s3_bucket}/data/y.jpg"}
        assert wait_until(lambda: set(pooled_keys(feed)) == want)
        assert feed.fetch(f"s3://{s3_bucket}/data/y.jpg") == b"y"
        reads = feed.stats()["manifest_reads"]
        put_objects(s3_client, s3_bucket,
                    {"lists/m.parquet": parquet_bytes("key", ["data/z"])})  # new ETag
        assert wait_until(lambda: pooled_keys(feed) == [f"s3://{s3_bucket}/data/z"])
        assert feed.stats()["manifest_reads"] == reads + 1


def test_text_manifest_on_s3_with_s3_base_and_local_manifest_of_uris(
    s3_server, s3_client, s3_bucket, tmp_path
):
    put_objects(s3_client, s3_bucket, {"pre/1.jpg": b"1", "pre/2.jpg": b"2"})
    put_objects(s3_client, s3_bucket, {"m.txt": b"1.jpg\n2.jpg\n"})
    spec = FeedSpec(f"s3://{s3_bucket}/m.txt", endpoint_url=s3_server.endpoint_url,
                    manifest_base=f"s3://{s3_bucket}/pre/", refresh_seconds=60)
    with open_feed(spec) as feed:
        got = set(feed.sample(50, random.Random(0), timeout=10))
        assert got == {f"s3://{s3_bucket}/pre/1.jpg", f"s3://{s3_bucket}/pre/2.jpg"}
        assert feed.fetch(f"s3://{s3_bucket}/pre/2.jpg") == b"2"
    local = tmp_path / "uris.txt"
    local.write_text(f"s3://{s3_bucket}/pre/1.jpg\n")
    spec = FeedSpec(str(local), endpoint_url=s3_server.endpoint_url, refresh_seconds=60)
    with open_feed(spec) as f:
        (key,) = f.sample(1, random.Random(0), timeout=10)
        assert f.fetch(key) == b"1"
        s3_client.delete_object(Bucket=s3_bucket, Key="pre/1.jpg")
        with pytest.raises(ObjectVanished):
            f.fetch(key)


def test_oversized_object_refused_from_its_size(s3_server, s3_client, s3_bucket):
    put_objects(s3_client, s3_bucket, {"img/big.jpg": b"x" * 200_000, "img/ok.jpg": b"y" * 10})
    with S3Feed(s3_spec(s3_bucket, s3_server.endpoint_url)) as feed:
        with pytest.raises(ObjectTooLarge) as info:
            feed.fetch("img/big.jpg", max_bytes=1000)
        assert (info.value.size, info.value.limit) == (200_000, 1000)
        assert feed.stats()["bytes_fetched"] == 0  # the body was never read
        assert feed.fetch("img/ok.jpg", max_bytes=1000) == b"y" * 10
        assert len(feed.fetch("img/big.jpg")) == 200_000  # no limit: read whole
