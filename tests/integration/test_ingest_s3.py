"""The real path end to end: objects in a real S3 server → Ray Data stream → ingest actors.

Bad inputs and store faults must never stop the stream; each object ends as crops or as its
counted reason. The stream is the production one, bounded and counted by
``tests/integration/counted_stream.py``: what the ingest actor counted into its metrics is
checked *exactly* against the keys the read tasks actually sampled (sampling is random, the
outcome of each key is not).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from seer_core.config import SeerConfig, config_from_dict
from tests.data.bad_inputs import CROPS, bad_inputs, good_jpeg
from tests.integration.counted_stream import CountedStream
from tests.s3server import FaultProxy, MotoServer, make_client, put_objects

pytestmark = pytest.mark.integration

MAX_BYTES = 100_000
READ_TASKS = 2


def s3_cfg(uri: str, endpoint: str, chunk: int, **feed: Any) -> SeerConfig:
    return config_from_dict(
        {
            "augment": {"global_size": 32, "local_size": 16, "n_local": 2},
            "train": {"batch_size": 8},
            "feed": {"uri": uri, "endpoint_url": endpoint, "refresh_seconds": 60.0,
                     "retry_budget_s": 5.0, "fetch_timeout_s": 2.0, **feed},
            "ingest": {
                "read_tasks": READ_TASKS,
                "chunk_images": chunk,
                "actors": 1,
                "read_task_cpus": 0.25,
                "max_object_bytes": MAX_BYTES,
                "target_max_block_mb": 4,
            },
        }
    )


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CountedStream]:
    with CountedStream(monkeypatch, tmp_path / "record") as counted:
        yield counted


def run_bounded(ds: Any, batch_size: int) -> int:
    """All of a bounded stream (:class:`CountedStream`); checks the batches, returns the image
    count."""
    rows = 0
    for batch in ds.iter_torch_batches(batch_size=batch_size, drop_last=False):
        b = batch["crops_32"].shape[0]
        assert batch["crops_32"].shape == (b, 2, 3, 32, 32)
        assert batch["crops_16"].shape == (b, 2, 3, 16, 16)
        assert batch["crops_32"].dtype == torch.uint8 == batch["crops_16"].dtype
        rows += b
    return rows


def expected_counts(keys: list[str], outcome: dict[str, str]) -> Counter[str]:
    """What the stats must say given the sampled keys and each key's known outcome."""
    return Counter("images" if outcome[k] == CROPS else outcome[k] for k in keys)


def test_bad_inputs_through_the_stream(
    ray_cluster: Any, s3_server: MotoServer, s3_client: Any, s3_bucket: str,
    counted: CountedStream,
) -> None:
    cases = bad_inputs(MAX_BYTES)
    put_objects(s3_client, s3_bucket, {f"bad/{name}": data for name, (data, _) in cases.items()})
    outcome = {f"bad/{name}": want for name, (_, want) in cases.items()}
    chunk = 40
    cfg = s3_cfg(f"s3://{s3_bucket}/bad/", s3_server.endpoint_url, chunk)
    # The endless read tasks, bounded to 3 chunks each so that counts can be exact: 240 draws
    # over 12 objects (P(one never drawn) < 1e-8), through the actor pool for real.
    chunks = 3
    images = run_bounded(counted.build(cfg, chunks), cfg.train.batch_size)
    keys = counted.keys()
    assert len(keys) == chunks * READ_TASKS * chunk
    assert set(keys) == set(outcome), f"never sampled: {set(outcome) - set(keys)}"
    want = expected_counts(keys, outcome)
    assert counted.counts() == want
    assert images == want["images"]
    assert {"not_image", "corrupt", "too_small", "too_large"} <= set(want)


def test_stream_rides_out_store_faults(
    ray_cluster: Any, fresh_s3_server: MotoServer, tmp_path: Path, counted: CountedStream
) -> None:
    """Throttling (retried), objects gone after listing (vanished), a store restart (resumed)."""
    bucket = "faults"
    good = {f"img/{i}.jpg": good_jpeg(72, 60, seed=i) for i in range(8)}
    gone = [f"img/gone_{i}.jpg" for i in range(4)]  # listed in the manifest, never in the store
    client = make_client(fresh_s3_server.endpoint_url)

    def populate() -> None:
        client.create_bucket(Bucket=bucket)
        put_objects(client, bucket, good)

    populate()
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(f"s3://{bucket}/{k}\n" for k in [*good, *gone]))
    outcome = {f"s3://{bucket}/{k}": CROPS for k in good}
    outcome.update({f"s3://{bucket}/{k}": "vanished" for k in gone})

    with FaultProxy(fresh_s3_server.endpoint_url) as proxy:
        chunk = 16
        # The time budget, not botocore's attempts, must ride out the outage: botocore sends a
        # call 3 times (and once its retry quota is spent, once), then seer calls again with
        # its backoff until retry_budget_s is spent. On the code where botocore's retries
        # were the only ones for a call, objects read during the outage ended as fetch_error.
        cfg = s3_cfg(str(manifest), proxy.endpoint_url, chunk, retry_budget_s=30.0,
                     max_attempts=3)

        def stream() -> Any:  # one chunk per read task, so that counts can be exact
            return counted.build(cfg, chunks=1)
        object_gets = rf"^GET /{bucket}/img/"

        # 1. Throttling and 5xx on object GETs: retried inside the feed, nothing lost.
        proxy.fail_next(4, status=503, code="SlowDown", match=object_gets)
        proxy.fail_next(2, status=500, code="InternalError", match=object_gets)
        images = run_bounded(stream(), cfg.train.batch_size)
        assert len(counted.keys()) == READ_TASKS * chunk
        assert proxy.faults_served == 6
        want = expected_counts(counted.keys(), outcome)
        assert counted.counts() == want
        assert images == want["images"] > 0
        assert want["vanished"] > 0  # 4 of 12 entries are gone: 32 draws always hit one

        # 2. The store goes down between chunks and comes back (empty, as moto does) while the
        #    next one is read: fetches wait it out within their budget; the chunk completes.
        fresh_s3_server.stop()

        def come_back() -> None:
            time.sleep(2.0)
            proxy.fail_next(-1, status=503, code="SlowDown")  # hide the refill from readers
            fresh_s3_server.start()
            populate()
            proxy.clear()

        def unanswered() -> int:  # requests the proxy could not forward: the store was down
            return proxy.requests - proxy.forwarded - proxy.faults_served

        dropped_before = unanswered()
        restarter = threading.Thread(target=come_back, daemon=True)
        start = time.monotonic()
        restarter.start()
        images2 = run_bounded(stream(), cfg.train.batch_size)
        restarter.join(timeout=60)
        assert time.monotonic() - start >= 2.0
        assert unanswered() > dropped_before  # the readers really did hit the outage
        assert len(counted.keys()) == 2 * READ_TASKS * chunk
        want = expected_counts(counted.keys(), outcome)
        assert counted.counts() == want  # no fetch_error: the outage fit in the budget
        assert images2 > 0 and images + images2 == want["images"]
