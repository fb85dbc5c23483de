"""Feeds: where the never-ending stream of images comes from.

One interface (:class:`PooledFeed`), three sources: an S3-compatible bucket prefix, a manifest file
(Parquet/CSV/text, local or on S3), and a local directory. Every feed keeps a bounded pool of
keys refreshed in the background and samples it uniformly with replacement: there are no epochs.

    spec = FeedSpec("s3://bucket/images/", endpoint_url="http://minio:9000")
    feed = open_feed(spec)        # in each process; the spec pickles, the feed does not
    for key in feed.sample(64, rng):
        try:
            data = feed.fetch(key)
        except ObjectVanished:    # deleted since it was listed: skip
            ...
        except FetchFailed:       # store unreachable for the whole retry budget: skip
            ...
"""

from services.feed.base import (
    DEFAULT_IMAGE_EXTENSIONS,
    KINDS,
    FeedClosed,
    FeedEmpty,
    FeedError,
    FeedSpec,
    FetchFailed,
    ObjectTooLarge,
    ObjectVanished,
)
from services.feed.open import open_feed
from services.feed.pooled import PooledFeed

__all__ = ["DEFAULT_IMAGE_EXTENSIONS", "KINDS", "FeedClosed", "FeedEmpty", "FeedError", "FeedSpec",
           "FetchFailed", "ObjectTooLarge", "ObjectVanished", "PooledFeed", "open_feed"]
