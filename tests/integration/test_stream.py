"""The Ray Data stream end to end on a local directory: one endless execution of uint8 crops."""

from __future__ import annotations

import dataclasses
import itertools
import os
import pickle
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from seer_core.config import ConfigError, SeerConfig, config_from_dict
from services.ingest.read import EndlessDatasource, EndlessRead, feed_spec
from services.ingest.stream import dataset_factory, execution_options
from tests.data.bad_inputs import good_jpeg

pytestmark = pytest.mark.integration

N_IMAGES = 12
READ_TASKS = 2
CHUNK = 10


def stream_cfg(uri: str, **ingest: Any) -> SeerConfig:
    return config_from_dict(
        {
            "augment": {"global_size": 32, "local_size": 16, "n_local": 2},
            "train": {"batch_size": 4},
            "feed": {"uri": uri, "refresh_seconds": 60.0, "retry_budget_s": 5.0},
            "ingest": {
                "read_tasks": READ_TASKS,
                "chunk_images": CHUNK,
                "actors": 1,
                "cpus_per_actor": 1.0,
                "read_task_cpus": 0.25,
                "target_max_block_mb": 4,
                **ingest,
            },
        }
    )


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stream-images")
    for i in range(N_IMAGES):
        (root / f"img_{i:02d}.jpg").write_bytes(good_jpeg(64 + 4 * i, 56, seed=i))
    return root


def test_read_tasks_draw_fresh_chunks(image_dir: Path) -> None:
    """Each read task draws new chunks for ever, and so does every execution, even of the same
    pickled read tasks (Ray ships them where they run, again after an error)."""
    cfg = stream_cfg(str(image_dir))
    read = EndlessRead(feed_spec(cfg), chunk_images=8, max_object_bytes=10**6,
                       block_bytes=10**6, fetch_threads=2)
    blob = pickle.dumps(EndlessDatasource(read, read_tasks=3))
    first = pickle.loads(blob).reads()
    second = pickle.loads(blob).reads()
    assert len(first) == 3
    draws = []
    for read in first + second + [pickle.loads(pickle.dumps(first[0]))]:
        chunks = read.key_chunks()
        draws += [tuple(next(chunks)) for _ in range(3)]  # endless: take three
    assert all(len(d) == 8 for d in draws)
    assert len(set(draws)) == len(draws)  # 12^8 possibilities each: no repeats
    # Blocks: split at block_bytes, with the read schema, chunk after chunk.
    small = EndlessDatasource(dataclasses.replace(read, block_bytes=1), read_tasks=1)
    blocks = small.reads()[0]()
    tables = list(itertools.islice(blocks, 24))  # three chunks of the endless read
    blocks.close()
    assert [t.num_rows for t in tables] == [1] * 24
    assert tables[0].column_names == ["key", "data", "reason"]


def test_dataset_factory_is_picklable_and_builds(ray_cluster: Any, image_dir: Path) -> None:
    cfg = stream_cfg(str(image_dir), target_max_block_mb=3)
    factory = pickle.loads(pickle.dumps(dataset_factory(cfg)))
    ds = factory()
    from ray.data import DataContext

    assert DataContext.get_current().target_max_block_size == 3 * 1024 * 1024
    batches = iter(ds.iter_torch_batches(batch_size=2))
    batch = next(batches)
    batches.close()  # an endless stream: stop it rather than leave it to the GC
    assert batch["crops_32"].shape == (2, 2, 3, 32, 32)
    # The guard rail: blocks over 1/32 of the Data budget are refused, naming both keys.
    with pytest.raises(ConfigError, match=r"ingest\.target_max_block_mb.*object_store_mb"):
        stream_cfg(str(image_dir), target_max_block_mb=16, object_store_mb=256)
    opts = execution_options(cfg)
    assert opts.resource_limits.object_store_memory == 256 * 1024 * 1024


def test_ingest_metrics_reach_rays_endpoint(ray_cluster: Any) -> None:
    """Actors' metrics are exported by Ray (prefixed ray_) on the node's metrics port."""
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(ray_cluster.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        if "ray_seer_ingest_images_total" in text:
            break
        time.sleep(0.5)
    lines = [ln for ln in text.splitlines() if ln.startswith("ray_seer_ingest_images_total")]
    assert lines, "ray_seer_ingest_images_total not exported"
    assert sum(float(ln.rsplit(" ", 1)[1]) for ln in lines) >= READ_TASKS * CHUNK
    assert "ray_seer_ingest_decode_seconds_bucket" in text
    assert "ray_seer_ingest_fetch_seconds_bucket" in text


def test_ingest_actor_maps_read_rows_to_crop_rows() -> None:
    """The actor's callable without Ray: failed rows are counted (in the metrics: no Ray here,
    so the process's own registry) and dropped, shapes kept."""
    import numpy as np

    from services.ingest.crop import IngestActor

    actor = IngestActor(stream_cfg("unused"))
    batch = {
        "key": np.array(["a", "b", "c", "d"], dtype=object),
        "data": np.array([good_jpeg(seed=1), b"", b"", b"<html>"], dtype=object),
        "reason": np.array(["", "vanished", "too_large", ""], dtype=object),
    }
    before = _counted()
    out = actor(batch)
    assert {k: v.shape for k, v in out.items()} == {
        "crops_32": (1, 2, 3, 32, 32), "crops_16": (1, 2, 3, 16, 16)
    }
    assert all(v.dtype == np.uint8 for v in out.values())
    assert _counted() - before == Counter(images=1, vanished=1, too_large=1, not_image=1)
    # A batch in which everything failed still yields well-formed (empty) columns.
    failed = actor({k: v[1:3] for k, v in batch.items()})
    assert failed["crops_32"].shape == (0, 2, 3, 32, 32)
    assert _counted() - before == Counter(images=1, vanished=2, too_large=2, not_image=1)


def _counted() -> Counter[str]:
    """The metrics of this process so far: ``images``, and one entry per failure reason."""
    from services.ingest.read import REASONS
    from services.metrics import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    return Counter({"images": value("seer_ingest_images_total"),
                    **{r: value("seer_ingest_failures_total", reason=r) for r in REASONS}})


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 photo-like images of 256-1280 px (~140 KB): cropping them is what bounds the actor,
    as with real photos; with small, quickly cropped images the soak does not show the
    run-away."""
    from services.images.sample import generate_sample_images

    root = tmp_path_factory.mktemp("stream-photos")
    generate_sample_images(root, 48, seed=7, progress=False)
    return root


@pytest.mark.slow
def test_soak_stays_under_budget_through_a_consumer_stall(photo_dir: Path) -> None:
    """The trainers' case, on a 2-CPU Ray of its own (``tests/integration/stream_soak.py``):
    a consumer slower than the producer stops taking batches for half the run (a checkpoint,
    an evaluation), then resumes. The object store stays within the Data budget plus slack at
    every sample, nothing spills, one actor serves throughout, and the driver's and the
    actor's memory stay flat. Without the liveness settings of ``configure_data_context`` this
    ran away in 3 of 3 tries here, within 2 s of the consumer resuming (325-393 MiB against a
    128 MiB bound). ``SEER_SOAK_S`` sets the length (default 45 s)."""
    import json
    import subprocess
    import sys

    from tests.integration.conftest import RAY_ENV
    from tests.integration.stream_soak import soak_seconds

    seconds = soak_seconds()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.stream_soak", str(photo_dir),
         "--seconds", str(seconds)],
        capture_output=True, text=True, timeout=seconds + 180,
        env={**os.environ, **RAY_ENV}, cwd=Path(__file__).resolve().parents[2],
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(lines[-1])
    print(f"soak: {report} (exit status {proc.returncode})")
    assert not report["over_bound"], report
    assert report["spilled"] == 0
    assert report["images_before"] > 0 and report["images_after"] > 0  # resumed after the stall
    assert report["samples"] >= 60
    assert len(report["pids"]) == 1  # the same actor all along
    # Flat memory: bounded growth after the warm-up (allocator noise, not a leak).
    assert report["rss_growth_mb"]["driver"] < 150
    assert report["rss_growth_mb"]["actor"] < 150
