"""The feed's request counter against the real S3 server: one count per HTTP request sent."""

from __future__ import annotations

import random
from typing import Any

from services.feed import FeedSpec, open_feed
from services.feed.requests import REQUESTS
from services.metrics import REGISTRY
from tests.s3server import put_objects


def _count(op: str) -> float:
    REQUESTS.ready()
    return REGISTRY.get_sample_value("seer_feed_requests_total", {"op": op}) or 0.0


def test_gets_and_lists_are_counted_per_request(s3_server: Any, s3_client: Any,
                                                s3_bucket: str) -> None:
    put_objects(s3_client, s3_bucket, {f"img/{i:03d}.jpg": b"x" * 10 for i in range(5)})
    before_get, before_list = _count("GET"), _count("LIST")
    feed = open_feed(FeedSpec(f"s3://{s3_bucket}/img/", endpoint_url=s3_server.endpoint_url,
                              refresh_seconds=60))
    try:
        keys = feed.sample(3, random.Random(0))
        for key in keys:
            assert feed.fetch(key) == b"x" * 10
    finally:
        feed.close()
    assert _count("GET") - before_get == 3
    assert _count("LIST") - before_list >= 1
