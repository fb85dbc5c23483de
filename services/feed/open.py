"""Opening a feed: the one place that knows every concrete feed (``base`` ← ``pooled`` ← ``s3`` /
``manifest`` / ``directory`` ← here). Each is imported only when a spec asks for it: a process
that reads a directory never loads pyarrow's Parquet reader.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from services.feed.base import FeedSpec
from services.feed.pooled import PooledFeed


def open_feed(uri_or_spec: str | FeedSpec, **kwargs: Any) -> PooledFeed:
    """Opens the live feed in this process (no I/O until first use), from a URI plus FeedSpec
    fields or from a ready spec (with overrides). The spec pickles; the feed does not."""
    if isinstance(uri_or_spec, FeedSpec):
        spec = replace(uri_or_spec, **kwargs) if kwargs else uri_or_spec
    else:
        spec = FeedSpec(uri=uri_or_spec, **kwargs)
    kind = spec.resolved_kind()
    if kind == "shards":  # no key pool: read tasks visit shards (services.ingest.shard_read)
        raise ValueError(f"uri: {spec.uri!r} names shards, which are read by shard visits, "
                         "not as a key feed")
    if kind == "s3":
        from services.feed.s3 import S3Feed

        return S3Feed(spec)
    if kind == "manifest":
        from services.feed.manifest import ManifestFeed

        return ManifestFeed(spec)
    from services.feed.directory import DirectoryFeed

    return DirectoryFeed(spec)
