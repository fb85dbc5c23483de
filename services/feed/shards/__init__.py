"""Shard feeds: images packed many to an object, as the public corpora are published.

WebDataset tars (img2dataset's ``00000.tar`` of ``<key>.jpg`` + ``<key>.json``) and Parquet image
tables (the Hugging Face ``datasets`` layout) cost one streaming or a few ranged GETs for
thousands of images, where the object feed pays one GET per image. This package is the part that
needs no store client: names from brace patterns (``names``), the readers that turn one shard
into samples (``readers``), a seekable file over ranged GETs for Parquet (``ranged``), and the
endless visitor with its shuffle buffer (``visit``). The store side hands in callables:
``source`` (imported by name, not here) lists a ``feed.uri``'s shards (for the run's owner,
``services.ingest.keys``) and opens them, locally or on S3, for the shard read task
(``services.ingest.shard_read``).

    rng = random.Random()
    visitor = ShardVisitor(lambda: rng.choice(shard_names), open_shard, rng, shuffle_buffer=1000)
    for sample in visitor:        # endless; sample.data is None when sample.reason says why
        ...
"""

from services.feed.shards.names import MAX_SHARD_NAMES, expand_shard_pattern
from services.feed.shards.ranged import BLOCK_BYTES, RangedReader
from services.feed.shards.readers import (
    BAD_SHARD,
    IMAGE_COLUMNS,
    SHARD_REASONS,
    ShardFile,
    ShardSample,
    iter_parquet_samples,
    iter_shard_samples,
    iter_tar_samples,
    resolve_image_column,
    shard_format,
)
from services.feed.shards.visit import ShardReader, ShardVisitor, ShuffleBuffer

__all__ = ["BAD_SHARD", "BLOCK_BYTES", "IMAGE_COLUMNS", "MAX_SHARD_NAMES", "SHARD_REASONS",
           "RangedReader", "ShardFile", "ShardReader", "ShardSample", "ShardVisitor",
           "ShuffleBuffer", "expand_shard_pattern", "iter_parquet_samples", "iter_shard_samples",
           "iter_tar_samples", "resolve_image_column", "shard_format"]
