"""The requests a feed sends to its object store, by operation: what a store bills and what the
cost model (``benchmarks/feed_cost.py``) scales up. Counted at botocore's ``before-send`` event,
once per HTTP request actually sent, so botocore's own retries count too (the store bills them),
and in one place for every client a feed builds (object reads, listings, shard streams, ranged
reads).
"""

from __future__ import annotations

from typing import Any

from services import metrics

REQUESTS = metrics.counter("seer_feed_requests_total",
                           "HTTP requests a feed sent to its object store, by operation", ("op",))

#: botocore operation names -> the short label S3 price lists use.
OPS: dict[str, str] = {"GetObject": "GET", "ListObjectsV2": "LIST", "HeadObject": "HEAD"}


def count_requests(client: Any) -> Any:
    """``client`` (a boto3 S3 client), with every request it sends counted in :data:`REQUESTS`."""

    def on_send(event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        REQUESTS.inc(1, {"op": OPS.get(operation, operation)})

    client.meta.events.register("before-send.s3", on_send)
    return client
