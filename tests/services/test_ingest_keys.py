"""The run's key owner without Ray (issue 20, point 3): how read tasks draw keys in batches, wait
out an unreachable owner and pass on FeedEmpty; the owner's sampling and forgetting; a shard
feed's read task drawing its shards from the owner, and the owner of a shard list. The real
actor, on a real Ray and the real S3 server, is tests/integration/test_key_owner.py."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

from services.feed import FeedEmpty, FeedSpec
from services.feed.shards.source import ShardSource
from services.images.shards import write_webdataset_shards
from services.ingest import keys
from services.ingest.read import EndlessRead, IngestMetrics, close_process_feeds
from services.ingest.shard_read import ShardRead
from services.metrics import REGISTRY
from tests.data.bad_inputs import good_jpeg

SPEC = FeedSpec("/nowhere", retry_budget_s=2.0)


class FakeOwner:
    """An owner handle whose ``sample.remote`` answers at once: numbered keys (or ``names`` in
    turn), or the next of ``failures`` raised (by the patched ``ray.get``, as Ray raises a
    call's error)."""

    def __init__(self, failures: list[BaseException] | None = None,
                 names: list[str] | None = None) -> None:
        self.calls: list[tuple[int, list[str]]] = []
        self.failures = list(failures or [])
        self.numbers = itertools.count()
        self.names = names
        self.sample = self

    def remote(self, n: int, gone: list[str]) -> Any:
        self.calls.append((n, list(gone)))
        if self.failures:
            return self.failures.pop(0)
        if self.names:
            return [self.names[next(self.numbers) % len(self.names)] for _ in range(n)]
        return [f"k{next(self.numbers)}" for _ in range(n)]


@pytest.fixture
def owner(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A FakeOwner found by every lookup, ``ray.get`` raising what it returns, short waits;
    yields ``owner`` (the fake) and ``finds`` (lookups)."""
    state: dict[str, Any] = {"owner": FakeOwner(), "finds": 0}

    def find(name: str, spec: FeedSpec) -> FakeOwner:
        state["finds"] += 1
        return state["owner"]

    def get(ref: Any, timeout: float | None = None) -> Any:
        assert timeout is not None and timeout >= SPEC.retry_budget_s  # never a forever wait
        if isinstance(ref, BaseException):
            raise ref
        return ref

    monkeypatch.setattr(keys, "owner_actor", find)
    monkeypatch.setattr(keys.ray, "get", get)
    monkeypatch.setattr(keys, "BACKOFF_S", (0.01, 0.04))
    monkeypatch.setattr(keys, "BATCH_MAX_AGE_S", 0.5)
    yield state
    keys._take_gone("run")


def test_read_tasks_draw_whole_chunks_from_batches_of_1024(owner: dict[str, Any]) -> None:
    drawer = keys.KeyDrawer("run", SPEC)
    chunks = [drawer.draw(256) for _ in range(8)]
    # The paper preset's chunk of 256: one owner call per 4 chunks (25 calls/s at 25,600/s).
    assert [n for n, _ in owner["owner"].calls] == [1024, 1024]
    assert all(len(c) == 256 for c in chunks)
    flat = [k for c in chunks for k in c]
    assert flat == [f"k{i}" for i in range(2048)]  # in order: every drawn key used once
    assert owner["finds"] == 1  # the handle is kept between calls
    # A chunk that does not divide the batch: whole chunks per call, nothing thrown away.
    drawer = keys.KeyDrawer("run", SPEC)
    owner["owner"].calls.clear()
    for _ in range(15):
        assert len(drawer.draw(100)) == 100
    assert [n for n, _ in owner["owner"].calls] == [1000, 1000]
    # A chunk larger than the batch: one call per chunk.
    drawer = keys.KeyDrawer("run", SPEC)
    owner["owner"].calls.clear()
    assert len(drawer.draw(3000)) == 3000
    assert [n for n, _ in owner["owner"].calls] == [3000]


def test_a_batch_older_than_its_age_limit_is_replaced(owner: dict[str, Any]) -> None:
    """A slow stream does not work from keys drawn long ago (new objects, vanished ones)."""
    drawer = keys.KeyDrawer("run", SPEC)
    drawer.draw(64)
    drawer.draw(64)
    assert len(owner["owner"].calls) == 1
    time.sleep(keys.BATCH_MAX_AGE_S * 1.2)
    assert drawer.draw(64)[0] == "k1024"  # the rest of the first batch was dropped
    assert len(owner["owner"].calls) == 2


def test_an_unreachable_owner_is_waited_out_with_backoff(owner: dict[str, Any]) -> None:
    """Restarting (unavailable), died (looked up again: get_if_exists creates it if it is gone
    for good) or silent (a timeout): the read task waits, backing off, and goes on."""
    failures: list[BaseException] = [ActorUnavailableError("restarting", None)] * 3 + [
        ActorDiedError(), GetTimeoutError()] * 4
    owner["owner"] = FakeOwner(failures)
    drawer = keys.KeyDrawer("run", SPEC)
    start = time.monotonic()
    assert len(drawer.draw(64)) == 64
    waited = time.monotonic() - start
    low, high = keys.BACKOFF_S
    # Doubling from 0.01 s up to the 0.04 s cap: 0.01 + 0.02 + 9 x 0.04, each x [0.5, 1].
    assert (low + 2 * low + 9 * high) / 2 <= waited < 10.0
    assert owner["finds"] == len(failures) + 1  # looked up again after every failure


def test_feed_empty_keeps_its_meaning(owner: dict[str, Any]) -> None:
    """The owner's pool had no key within the feed's wait: the read task sees FeedEmpty (and
    pauses, as before), with the owner's reason, not a Ray error."""

    class RemoteFeedEmpty(FeedEmpty):  # what ray.get raises: an instance of the cause's class
        cause = FeedEmpty("feed s3://b/: no keys after 2.0s; the source lists no matching "
                          "objects")

    owner["owner"] = FakeOwner([RemoteFeedEmpty("traceback text")])
    with pytest.raises(FeedEmpty, match="the source lists no matching objects") as info:
        keys.KeyDrawer("run", SPEC).draw(8)
    assert type(info.value) is FeedEmpty  # key_chunks pauses and asks again, as before


def test_vanished_keys_go_to_the_owner_with_the_next_call(owner: dict[str, Any]) -> None:
    keys.report_vanished("run", "gone-1")
    keys.report_vanished("run", "gone-2")
    keys.report_vanished("other-run", "not-ours")
    drawer = keys.KeyDrawer("run", SPEC)
    drawer.draw(8)
    assert owner["owner"].calls == [(1024, ["gone-1", "gone-2"])]
    drawer.draw(1024)  # the batch has 1016 left: a new one
    assert owner["owner"].calls[1] == (1024, [])  # handed over once
    assert keys._take_gone("other-run") == ["not-ours"]


def test_the_endless_read_draws_from_its_owner(owner: dict[str, Any], tmp_path: Path) -> None:
    """With an owner, the read task's chunks come from it, and its own feed never lists."""
    from services.ingest.read import process_feed

    spec = FeedSpec(str(tmp_path), retry_budget_s=2.0)
    read = EndlessRead(spec, chunk_images=16, max_object_bytes=10**6, block_bytes=10**6,
                       fetch_threads=2, owner="run")
    chunks = read.key_chunks()
    drawn = [next(chunks) for _ in range(3)]
    assert drawn[0] == [f"k{i}" for i in range(16)] and len(drawn[2]) == 16
    try:
        assert process_feed(spec).stats()["listings"] == 0
    finally:
        close_process_feeds()


def test_the_owner_samples_its_pool_and_forgets_vanished_keys(tmp_path: Path) -> None:
    """The actor's class, in this process: uniform with replacement from one feed's pool."""
    for i in range(4):
        (tmp_path / f"{i}.jpg").write_bytes(b"x")
    owner = keys.KeyOwner(FeedSpec(str(tmp_path), retry_budget_s=10.0))
    try:
        drawn = owner.sample(400)
        assert len(drawn) == 400 and len(set(drawn)) == 4  # with replacement
        gone = str(tmp_path / "0.jpg")
        drawn = owner.sample(400, gone=[gone, gone])  # sampled twice, found gone twice
        assert gone not in drawn and len(set(drawn)) == 3
        assert owner.stats()["keys_evicted"] == 1
        assert owner.stats()["listings"] == 1  # one listing, however many draws
        assert owner.stats()["batches_served"] == 2
    finally:
        owner.feed.close()


def _shard_visits() -> tuple[float, float]:
    values = [REGISTRY.get_sample_value(f"seer_ingest_shard_{what}_total") or 0.0
              for what in ("visits", "vanished")]
    return values[0], values[1]


def test_the_shard_read_draws_its_shards_from_the_owner_and_hands_back_vanished_ones(
        owner: dict[str, Any], tmp_path: Path) -> None:
    """A shard read task's visits come from the owner, SHARD_BATCH names a call; a shard found
    gone goes back with the next call, counted; the task's own source only opens, never lists."""
    [shard] = write_webdataset_shards([(f"i{k}", good_jpeg(40, 36, seed=k), "jpg")
                                       for k in range(2)], tmp_path, 2)
    gone = str(tmp_path / "00009.tar")
    owner["owner"] = FakeOwner(names=[str(shard), gone])
    spec = FeedSpec(f"{tmp_path}/*.tar", shuffle_buffer=0, retry_budget_s=2.0)
    source = ShardSource(spec)
    visits, vanished = _shard_visits()
    samples = ShardRead(spec, block_rows=4, max_object_bytes=10**6, block_bytes=10**6,
                        owner="run").samples(source, IngestMetrics())
    try:
        # 2 images, then the vanished one, per 2 visits: 99 samples are 66 visits, 2 calls.
        out = list(islice(samples, 99))
    finally:
        samples.close()
        source.close()
    assert [s.reason for s in out[:3]] == ["", "", "vanished"] and out[2].key == gone
    assert owner["owner"].calls == [(keys.SHARD_BATCH, []),
                                    (keys.SHARD_BATCH, [gone] * (keys.SHARD_BATCH // 2))]
    assert source.stats()["listings"] == 0
    assert _shard_visits() == (visits + 66, vanished + 33)


def test_the_owner_of_a_shard_feed_serves_its_shard_list(tmp_path: Path) -> None:
    """The actor's class on a shard feed: its pool is the shard list, listed once, drawn with
    replacement; a shard found gone leaves it."""
    paths = write_webdataset_shards([(f"i{k}", good_jpeg(40, 36, seed=k), "jpg")
                                     for k in range(3)], tmp_path, 1)
    owner = keys.KeyOwner(FeedSpec(f"{tmp_path}/{{00000..00009}}.tar", retry_budget_s=10.0))
    try:
        assert set(owner.sample(200)) == {str(p) for p in paths}
        assert set(owner.sample(200, gone=[str(paths[0])])) == {str(p) for p in paths[1:]}
        assert owner.stats()["listings"] == 1 and owner.stats()["batches_served"] == 2
    finally:
        owner.feed.close()


def test_the_owner_name_follows_the_run_and_the_spec() -> None:
    name = keys.owner_name(SPEC, "runs", "a")
    assert name == keys.owner_name(FeedSpec("/nowhere", retry_budget_s=2.0), "runs", "a")
    assert name.startswith("seer-keys-a-")
    others = {keys.owner_name(SPEC, "runs", "b"), keys.owner_name(SPEC, "s3://x/runs", "a"),
              keys.owner_name(FeedSpec("/elsewhere"), "runs", "a")}
    assert name not in others and len(others) == 3
