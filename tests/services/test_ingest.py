"""fetch_object + Cropper without Ray: fetch → guards → multi-crop → batch; failures: reasons."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from seer_core.config import SeerConfig, config_from_dict
from services import metrics
from services.feed import FeedSpec, FetchFailed, open_feed
from services.ingest.crop import Cropper, empty_batch
from services.ingest.read import (
    REASONS,
    Fetched,
    close_process_feeds,
    feed_spec,
    fetch_object,
    process_feed,
)
from tests.data.bad_inputs import CROPS, bad_inputs, good_jpeg, png_bomb_header
from tests.s3server import put_objects
from tests.waiting import pooled_keys


def ingest_keys(cropper: Cropper, feed: Any, keys: list[str]) -> Any:
    """What a read task and an ingest actor do together: fetch each key, then crop."""
    return cropper.process_fetched(
        [fetch_object(feed, k, cropper.max_object_bytes, meter=cropper.meter) for k in keys]
    )

MAX_BYTES = 100_000
#: How long a wait may take on a loaded machine before a test calls it a hang.
PATIENCE_S = 60.0


def small_cfg(uri: str = "unused", **ingest: Any) -> SeerConfig:
    """Tiny crops so that tests measure the ingest logic, not resize speed."""
    return config_from_dict(
        {
            "augment": {"global_size": 32, "local_size": 16, "n_local": 3},
            "feed": {"uri": uri, "retry_budget_s": 2.0, "refresh_seconds": 60.0},
            "ingest": {"max_object_bytes": MAX_BYTES, **ingest},
        }
    )


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[bytes, str]]:
    return bad_inputs(MAX_BYTES)


@pytest.fixture
def image_dir(tmp_path: Path, cases: dict[str, tuple[bytes, str]]) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for name, (data, _) in cases.items():
        (root / name).write_bytes(data)
    return root


def _sample(registry_name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(registry_name, labels) or 0.0


def _counts() -> Counter[str]:
    """What the metrics say so far: ``images``, and one entry per failure reason."""
    return Counter({"images": _sample("seer_ingest_images_total"),
                    **{r: _sample("seer_ingest_failures_total", reason=r) for r in REASONS}})


def test_feed_spec_from_config() -> None:
    cfg = config_from_dict(
        {"feed": {"uri": "s3://bucket/images/", "endpoint_url": "http://127.0.0.1:9",
                  "pool_size": 7, "retry_budget_s": 3.5, "fetch_timeout_s": 1.5,
                  "idle_stop_seconds": 60}}
    )
    spec = feed_spec(cfg)
    assert spec == feed_spec(cfg.feed)
    assert (spec.uri, spec.resolved_kind(), spec.endpoint_url) == (
        "s3://bucket/images/", "s3", "http://127.0.0.1:9"
    )
    assert (spec.pool_size, spec.retry_budget_s, spec.fetch_timeout_s) == (7, 3.5, 1.5)
    assert spec.idle_stop_s == 60


def test_every_bad_input_ends_as_crops_or_its_reason(
    image_dir: Path, cases: dict[str, tuple[bytes, str]]
) -> None:
    cfg = small_cfg(str(image_dir))
    with open_feed(str(image_dir), refresh_seconds=60.0) as feed:
        worker = Cropper(cfg, seed=0)
        feed.sample(1, random.Random(0))  # waits for the first listing
        keys = sorted(pooled_keys(feed))
        assert len(keys) == len(cases)
        before = _counts()
        result = ingest_keys(worker, feed, keys)

    expected = {str(image_dir / name): outcome for name, (_, outcome) in cases.items()}
    got = {key: reason for key, reason in result.rejected}
    got.update({key: CROPS for key in result.keys})
    assert got == expected
    n_ok = sum(1 for o in expected.values() if o == CROPS)
    assert result.batch["crops_32"].shape == (n_ok, 2, 3, 32, 32)
    assert result.batch["crops_16"].shape == (n_ok, 3, 3, 16, 16)
    assert all(t.dtype == torch.uint8 and t.is_contiguous() for t in result.batch.values())
    # Every failure counted exactly once, by reason, in the result and in the metric.
    want = Counter(o for o in expected.values() if o != CROPS)
    assert Counter(reason for _, reason in result.rejected) == want and want["corrupt"] >= 1
    assert _counts() - before == Counter({"images": n_ok, **want})
    # The numpy view is the same memory: no copy on the way into a Ray block.
    arrays = result.numpy()
    assert arrays["crops_32"].ctypes.data == result.batch["crops_32"].data_ptr()


def test_decompression_bomb_refused_from_header() -> None:
    # No clock: "too_large" can only come from the header (the file holds one tiny IDAT chunk;
    # decoding it would have to allocate 30 GB first, and would end as "corrupt" if it could).
    worker = Cropper(small_cfg())
    result = worker.process_bytes({"bomb.png": png_bomb_header(100_000, 100_000)})
    assert result.rejected == [("bomb.png", "too_large")]
    assert result.batch["crops_32"].shape == (0, 2, 3, 32, 32)


def test_pixel_and_side_limits_come_from_config() -> None:
    cfg = small_cfg()
    cfg.augment.max_pixels = 50 * 50
    cfg.augment.min_side = 40
    worker = Cropper(cfg, seed=1)
    result = worker.process_bytes(
        {"big": good_jpeg(60, 60), "narrow": good_jpeg(45, 38), "fits": good_jpeg(48, 44)}
    )
    assert dict(result.rejected) == {"big": "too_large", "narrow": "too_small"}
    assert result.keys == ["fits"]


def test_byte_limit_applies_before_decode() -> None:
    cfg = small_cfg(max_object_bytes=1000)
    worker = Cropper(cfg)
    data = good_jpeg(96, 80)
    assert len(data) > 1000
    result = worker.process_bytes([("k", data)])
    assert result.rejected == [("k", "too_large")]


def test_vanished_and_fetch_error_are_reasons(image_dir: Path, tmp_path: Path) -> None:
    (image_dir / "a_directory.jpg").mkdir()  # unreadable as a file: fetch fails for good
    with open_feed(str(image_dir), refresh_seconds=60.0) as feed:
        feed.sample(1, random.Random(0))
        victim = str(image_dir / "cmyk.jpg")
        pooled = pooled_keys(feed)
        assert victim in pooled
        Path(victim).unlink()  # deleted between listing and fetch
        worker = Cropper(small_cfg())
        vanished_before = _sample("seer_ingest_failures_total", reason="vanished")
        result = ingest_keys(worker, feed, [victim, str(image_dir / "a_directory.jpg"),
                                 str(image_dir / "animated.gif")])
    assert result.rejected == [(victim, "vanished"), (str(image_dir / "a_directory.jpg"),
                                                       "fetch_error")]
    assert result.keys == [str(image_dir / "animated.gif")]
    assert _sample("seer_ingest_failures_total", reason="vanished") - vanished_before == 1


def test_process_fetched_counts_carried_reasons_once() -> None:
    worker = Cropper(small_cfg())
    before = _counts()
    result = worker.process_fetched(
        [
            Fetched("a", None, "vanished"),
            ("b", None, "fetch_error"),
            ("c", good_jpeg(), None),
            ("d", b"", None),
            ("e", None, "mystery"),  # unknown reasons are folded into "corrupt"
        ]
    )
    assert result.rejected == [("a", "vanished"), ("b", "fetch_error"), ("d", "not_image"),
                               ("e", "corrupt")]
    assert result.keys == ["c"]
    assert _counts() - before == Counter({"images": 1, "vanished": 1, "fetch_error": 1,
                                          "not_image": 1, "corrupt": 1})


def test_empty_batch_shapes() -> None:
    worker = Cropper(small_cfg())
    batch = empty_batch(worker.recipe)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "crops_32": (0, 2, 3, 32, 32), "crops_16": (0, 3, 3, 16, 16)
    }
    result = worker.process_fetched([("x", None, "vanished")])
    assert result.batch["crops_16"].shape[0] == 0 and result.keys == []


def test_photometric_on_device_leaves_colour_to_the_trainer() -> None:
    cfg = small_cfg()
    cfg.augment.photometric_on_device = True
    assert Cropper(cfg).multicrop.photometric is False
    cfg.augment.photometric_on_device = False
    assert Cropper(cfg).multicrop.photometric is True


def test_seeded_workers_are_reproducible() -> None:
    data = {f"k{i}": good_jpeg(80, 64, seed=i) for i in range(3)}
    a = Cropper(small_cfg(), seed=5).process_bytes(data)
    b = Cropper(small_cfg(), seed=5).process_bytes(data)
    c = Cropper(small_cfg(), seed=6).process_bytes(data)
    assert all(torch.equal(a.batch[k], b.batch[k]) for k in a.batch)
    assert not torch.equal(a.batch["crops_32"], c.batch["crops_32"])


def test_s3_fetch_errors_are_retried_then_counted(
    s3_bucket: str, s3_client: Any, fault_proxy: Any
) -> None:
    put_objects(s3_client, s3_bucket, {"img/a.jpg": good_jpeg(seed=1),
                                       "img/b.jpg": good_jpeg(seed=2)})
    # botocore sends each call 3 times; seer calls again until the 1 s budget is spent (a huge
    # max_attempts would let one botocore call back off for minutes, up to 20 s a retry).
    spec = FeedSpec(f"s3://{s3_bucket}/img/", endpoint_url=fault_proxy.endpoint_url,
                    retry_budget_s=1.0, fetch_timeout_s=5.0, refresh_seconds=60.0,
                    max_attempts=3)
    # The first listing is slower than the feed's own wait (its retry budget, 1 s), as on a
    # loaded machine: the test must wait for the listing, not for a fixed time.
    fault_proxy.delay_next(1, 1.5, match=r"^GET /[^/?]+/?\?.*list-type=2")
    try:
        _fetch_errors(process_feed(spec), fault_proxy)
    finally:
        close_process_feeds()


def _fetch_errors(feed: Any, fault_proxy: Any) -> None:
    worker = Cropper(small_cfg())
    # Waits on the pool's first keys (an event), with a timeout only a hang reaches.
    keys = sorted(set(feed.sample(20, random.Random(0), timeout=PATIENCE_S)))
    assert len(keys) == 2
    # Throttled twice, then served: retried inside the feed, the image makes it.
    fault_proxy.fail_next(2, status=503, code="SlowDown", match=r"^GET /[^?]+/img/")
    result = ingest_keys(worker, feed, keys)
    assert result.rejected == [] and len(result.keys) == 2
    assert fault_proxy.faults_served == 2
    # A store that keeps failing: the fetch gives up within the budget, as a counted reason.
    fault_proxy.fail_next(-1, status=500, code="InternalError", match=r"^GET /[^?]+/img/")
    # Ended by the time budget, not by botocore's 3 requests: at most 6 calls fit in 1 s
    # (tests.services.test_s3.max_calls), each of 3 requests (attempts counts requests).
    with pytest.raises(FetchFailed) as info:
        feed.fetch(keys[0])
    assert info.value.reason == "InternalError"
    assert info.value.elapsed_s >= 1.0
    assert 3 <= info.value.attempts <= 6 * 3
    result = ingest_keys(worker, feed, keys[:1])
    assert result.rejected == [(keys[0], "fetch_error")]
    fault_proxy.clear()
    assert ingest_keys(worker, feed, keys[:1]).keys == keys[:1]  # and it recovers by itself


def test_ingest_crops_use_the_configs_blur_probability() -> None:
    cfg = config_from_dict({"augment": {"global_size": 32, "local_size": 16,
                                        "blur_probability": 0.25}})
    worker = Cropper(cfg)
    assert worker.multicrop.photometric and worker.multicrop.params.p_blur == 0.25
