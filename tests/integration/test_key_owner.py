"""One key pool per run (issue 20, point 3), on a real Ray and the real S3 server.

The production stream (``build_stream``, 4 read-task processes) reads a bucket through a
:class:`FaultProxy` that counts every request by operation (the server's request counters): every
LIST comes from the run's key owner, one listing per refresh, none from a read task (with a pool
per read-task process they were 4x). Killing the owner mid-stream (``ray.kill(no_restart=False)``):
Ray restarts it, it lists again, read tasks draw from it, the stream goes on. The shard feed's list
has the same owner: shard read tasks, 1 and 4 of them side by side, visit tar shards of a glob
drawn from it, and the LIST calls per refresh are one listing's in both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from seer_core.config import SeerConfig, config_from_dict
from services.feed import FeedSpec
from services.images.shards import write_webdataset_shards
from services.ingest.keys import BATCH_MAX_AGE_S, owner_actor, owner_name
from services.ingest.read import feed_spec
from services.ingest.shard_read import ShardRead
from tests.data.bad_inputs import good_jpeg
from tests.s3server import FaultProxy, MotoServer, put_objects

pytestmark = pytest.mark.integration

N_IMAGES = 40
#: Refresh often, so a short window holds several refreshes.
REFRESH_S = 1.0
#: Refreshes each measurement window spans.
WINDOW_REFRESHES = 5


def owner_cfg(bucket: str, endpoint: str, read_tasks: int) -> SeerConfig:
    return config_from_dict({
        "augment": {"global_size": 32, "local_size": 16, "n_local": 2},
        "train": {"batch_size": 4},
        # pool_size over the bucket's size: each refresh is one sweep of one LIST page.
        "feed": {"uri": f"s3://{bucket}/", "endpoint_url": endpoint, "pool_size": 1000,
                 "refresh_seconds": REFRESH_S, "retry_budget_s": 10.0, "fetch_timeout_s": 5.0},
        # The smallest stream budget: read tasks are held back by Ray Data's backpressure
        # while the ingest actor starts, instead of fetching thousands of images into 256 MB
        # on the 2 cores that actor needs (the first batch came 40-80 s later that way).
        "ingest": {"read_tasks": read_tasks, "chunk_images": 8, "actors": 1,
                   "read_task_cpus": 0.25, "target_max_block_mb": 1,
                   "object_store_mb": 32},
        "checkpoint": {"run_name": f"keys-{read_tasks}"},
    })


@pytest.fixture
def images(s3_client: Any, s3_bucket: str) -> str:
    put_objects(s3_client, s3_bucket,
                {f"img/{i:03d}.jpg": good_jpeg(192, 160, seed=i) for i in range(N_IMAGES)})
    return s3_bucket


class Stream:
    """A running production stream over a proxy of its own, and its key owner."""

    def __init__(self, s3_server: MotoServer, bucket: str, read_tasks: int) -> None:
        import ray

        from services.ingest.stream import build_stream

        self.proxy = FaultProxy(s3_server.endpoint_url).start()
        self.cfg = owner_cfg(bucket, self.proxy.endpoint_url, read_tasks)
        self.name = owner_name(feed_spec(self.cfg), self.cfg.checkpoint.storage,
                               self.cfg.checkpoint.run_name)
        ds = build_stream(self.cfg)
        self.owner = ray.get_actor(self.name)
        self.batches: Iterator[Any] = iter(ds.iter_batches(batch_size=4, batch_format="numpy"))

    def take(self, n: int) -> None:
        for _ in range(n):
            batch = next(self.batches)
            assert batch["crops_32"].shape[1:] == (2, 3, 32, 32)

    def stats(self) -> dict[str, float]:
        """The owner's feed counters, once it answers (it may be restarting)."""
        import ray
        from ray.exceptions import RayActorError

        deadline = time.monotonic() + 120
        while True:
            try:
                return ray.get(self.owner.stats.remote(), timeout=60)
            except RayActorError:
                assert time.monotonic() < deadline, "the owner did not come back"
                time.sleep(0.5)

    def lists_per_refresh(self) -> float:
        """LIST requests the server saw per refresh of the owner, over ``WINDOW_REFRESHES``
        refreshes while the stream runs (a cycle in flight at either end: off by one at most)."""
        first_lists, first = self.proxy.ops["LIST"], self.stats()["refreshes"]
        deadline = time.monotonic() + 120
        while (refreshes := self.stats()["refreshes"]) < first + WINDOW_REFRESHES:
            assert time.monotonic() < deadline, "the owner stopped refreshing"
            self.take(2)
        return (self.proxy.ops["LIST"] - first_lists) / (refreshes - first)

    def close(self) -> None:
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()
        self.proxy.stop()


@pytest.mark.timeout(600)
def test_lists_per_refresh_are_the_owners_alone_and_the_owner_survives_a_kill(
    ray_cluster: Any, s3_server: MotoServer, images: str,
) -> None:
    """The production stream with 4 read-task processes: every LIST the server sees is the
    owner's, one listing per refresh (a pool per read-task process made it 4 + the refreshes'
    stagger). With 1 read task it can only be the same one listing, so only 4 are started: the
    shard test below compares 1 and 4 tasks side by side on the same owner code."""
    import ray

    stream = Stream(s3_server, images, 4)
    try:
        stream.take(4)
        rate = stream.lists_per_refresh()
        listings = stream.stats()["listings"]
        assert abs(stream.proxy.ops["LIST"] - listings) <= 1, (stream.proxy.ops, listings)
        assert stream.proxy.ops["GET"] >= 16  # the images themselves
        refreshes_before = stream.stats()["refreshes"]
        ray.kill(stream.owner, no_restart=False)
        killed = time.monotonic()
        stream.take(2)
        # A new process (its counters start again) that lists again ...
        while stream.stats()["refreshes"] >= refreshes_before:
            stream.take(2)
        back = time.monotonic()
        # ... serves the read tasks (each asks again once its batch is BATCH_MAX_AGE_S old) ...
        deadline = back + 3 * BATCH_MAX_AGE_S + 60
        while stream.stats().get("batches_served", 0) < 1:
            assert time.monotonic() < deadline, "no read task drew from the restarted owner"
            stream.take(2)
        # ... and the stream goes on fetching (blocks fetched before the kill may still be
        # queued: wait for new GETs).
        gets = stream.proxy.ops["GET"]
        while stream.proxy.ops["GET"] < gets + 16:
            assert time.monotonic() < deadline, "no object fetched after the restart"
            stream.take(2)
        print(f"owner back {back - killed:.1f}s after the kill; serving again after "
              f"{time.monotonic() - back:.1f}s")
        assert stream.stats()["listings"] >= 1
    finally:
        stream.close()
    print(f"LIST calls per refresh with 4 read tasks: {rate:.2f}")
    assert 0.5 <= rate <= 1.5, rate


@pytest.mark.timeout(300)
def test_a_shard_feeds_list_is_listed_once_per_refresh_whatever_the_read_tasks(
    ray_cluster: Any, s3_server: MotoServer, s3_client: Any, s3_bucket: str, tmp_path: Path,
) -> None:
    """What no other test shows: the shard feed's list (a glob, listed by LIST pages) has one
    owner per run. Two runs side by side, with 1 and with 4 shard read tasks, each through a
    proxy of its own: LIST calls per refresh of the owner are one listing's in both (a list per
    read task made it 4 with 4), and every LIST is the owner's. The read tasks are threads of
    this process (each with its own source and drawer, as in a worker of its own), which saves
    the seconds Ray takes to start worker processes: the stream's read tasks in their own
    processes drawing from an owner are the test above."""
    import ray

    def read_for(read: ShardRead, seconds: float) -> int:
        """A shard read task run for ``seconds``: its rows."""
        rows = 0
        blocks = read()
        deadline = time.monotonic() + seconds
        try:
            for table in blocks:
                rows += table.num_rows
                if time.monotonic() > deadline:
                    break
        finally:
            blocks.close()
        return rows

    images = [(f"i{k}", good_jpeg(48, 40, seed=k), "jpg") for k in range(12)]
    put_objects(s3_client, s3_bucket, {f"shards/{p.name}": p.read_bytes() for p in
                                       write_webdataset_shards(images, tmp_path, 4)})
    runs: dict[int, tuple[FaultProxy, Any, ShardRead]] = {}
    rates: dict[int, float] = {}
    for read_tasks in (1, 4):
        proxy = FaultProxy(s3_server.endpoint_url).start()
        spec = FeedSpec(f"s3://{s3_bucket}/shards/*.tar", endpoint_url=proxy.endpoint_url,
                        refresh_seconds=REFRESH_S, retry_budget_s=10.0, fetch_timeout_s=5.0,
                        shuffle_buffer=0)
        name = owner_name(spec, "runs", f"shards-{read_tasks}")
        runs[read_tasks] = (proxy, owner_actor(name, spec),  # the handle keeps it alive
                            ShardRead(spec, block_rows=4, max_object_bytes=10**6,
                                      block_bytes=10**6, owner=name))
    try:
        before = {n: (proxy.ops["LIST"], ray.get(owner.stats.remote())["refreshes"])
                  for n, (proxy, owner, _) in runs.items()}
        with ThreadPoolExecutor(5) as pool:
            rows = list(pool.map(lambda read: read_for(read, 3 * REFRESH_S),
                                 [read for n, (_, _, read) in runs.items() for _ in range(n)]))
        assert all(r >= 4 for r in rows), rows  # every task visited shards
        for n, (proxy, owner, _) in runs.items():
            stats = ray.get(owner.stats.remote())
            lists, refreshes = before[n]
            rates[n] = (proxy.ops["LIST"] - lists) / (stats["refreshes"] - refreshes)
            assert abs(proxy.ops["LIST"] - stats["listings"]) <= 1, (proxy.ops, stats)
            assert proxy.ops["GET"] >= n  # one streaming GET a visit
    finally:
        for proxy, owner, _ in runs.values():
            ray.kill(owner)
            proxy.stop()
    print(f"shard LIST calls per refresh: {rates}")
    assert 0.5 <= rates[1] <= 1.5 and 0.5 <= rates[4] <= 1.5, rates
