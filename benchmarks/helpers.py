"""What the benchmark scripts share: the repository on ``sys.path``, their images, a local S3
server to put them on (as objects or WebDataset shards), and the feeds' request counters.

Each script puts its own folder on ``sys.path`` and imports ``helpers`` (under ``runpy``, as
the tests run them, the script's folder is not on the path by itself).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pyarrow as pa

    from seer_core.config import IngestConfig
    from services.feed import FeedSpec

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load_images(folder: str | Path | None, n: int, side: int = 1080) -> list[tuple[str, bytes]]:
    """(name, bytes) of the first `n` images under `folder` (sorted), or of `n` freshly
    generated ~`side`-px photo-like JPEGs when `folder` is None; exits when there are none."""
    from services.feed import DEFAULT_IMAGE_EXTENSIONS
    from services.images.sample import generate_photo_like_jpegs

    if folder is None:
        tmp = tempfile.mkdtemp(prefix="seer-bench-")
        try:
            return [(p.name, p.read_bytes())
                    for p in generate_photo_like_jpegs(tmp, n, side=side, seed=0)]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    paths = sorted(p for p in Path(folder).rglob("*")
                   if p.is_file() and p.suffix.lower() in DEFAULT_IMAGE_EXTENSIONS)
    if not paths:
        raise SystemExit(f"no images ({', '.join(DEFAULT_IMAGE_EXTENSIONS)}) under {folder}")
    return [(p.name, p.read_bytes()) for p in paths[:n]]


#: Credentials for the throwaway local server (set only where the environment has none).
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def local_s3() -> Iterator[str]:
    """A throwaway ``moto_server`` on 127.0.0.1 (the tests' own launcher, tests/s3server.py);
    yields its endpoint URL and stops it afterwards."""
    from tests.s3server import MotoServer

    for name, value in DUMMY_AWS.items():
        os.environ.setdefault(name, value)
    with MotoServer() as server:
        yield server.endpoint_url


def new_bucket(endpoint: str | None) -> tuple[Any, str]:
    """A client of the server at ``endpoint`` and a fresh bucket on it."""
    from tests.s3server import make_client

    client = make_client(endpoint)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def upload_objects(endpoint: str | None, images: list[tuple[str, bytes]],
                   copies: int | None = None) -> str:
    """Puts the images, one object each, into a fresh bucket; returns their ``s3://`` prefix.
    ``copies``: that many objects, the images cycled (object ``i`` is image ``i % len``)."""
    client, bucket = new_bucket(endpoint)
    count = copies or len(images)

    def put(i: int) -> None:
        name, data = images[i % len(images)]
        client.put_object(Bucket=bucket, Key=f"images/{i:06d}_{name}", Body=data)

    with ThreadPoolExecutor(8) as pool:  # a few thousand small PUTs: the server is the limit
        list(pool.map(put, range(count)))
    return f"s3://{bucket}/images/"


class Shards(NamedTuple):
    """WebDataset tars on a server: the brace pattern naming them, what they hold, their size."""

    uri: str
    images: int
    image_bytes: int
    stored_bytes: int


def upload_shards(endpoint: str | None, images: list[tuple[str, bytes]], shard_images: int,
                  shards: int) -> Shards:
    """``shards`` WebDataset tars of ``shard_images`` images each (``write_webdataset_shards``,
    the images cycled, each copy under its own key) in a fresh bucket."""
    from services.images.shards import write_webdataset_shards

    count = shard_images * shards
    picks = [images[i % len(images)] for i in range(count)]
    samples = [(f"{i:06d}", data, Path(name).suffix) for i, (name, data) in enumerate(picks)]
    client, bucket = new_bucket(endpoint)
    with tempfile.TemporaryDirectory(prefix="seer-bench-shards-") as tmp:
        paths = write_webdataset_shards(samples, tmp, shard_images)
        for path in paths:
            with path.open("rb") as body:
                client.put_object(Bucket=bucket, Key=f"shards/{path.name}", Body=body)
        stored = sum(p.stat().st_size for p in paths)
    return Shards(f"s3://{bucket}/shards/{{00000..{len(paths) - 1:05d}}}.tar", count,
                  sum(len(d) for _, d in picks), stored)


def requests_sent() -> Counter[str]:
    """``seer_feed_requests_total`` of this process by op (every feed client counts there)."""
    from services.feed.requests import OPS, REQUESTS
    from services.metrics import REGISTRY

    REQUESTS.ready()
    return Counter({op: REGISTRY.get_sample_value("seer_feed_requests_total", {"op": op}) or 0.0
                    for op in OPS.values()})


def counted(name: str) -> float:
    """The value of this process's unlabelled counter ``name`` (e.g. a shard visit count)."""
    from services.metrics import DECLARED, REGISTRY

    DECLARED[name].ready()
    return REGISTRY.get_sample_value(name) or 0.0


#: Read blocks cut by rows only (``ingest.chunk_images``): a read stopped between two blocks has
#: no request in flight (an object block is out once all its GETs are done), so the requests
#: counted up to there are all its own, and none runs on into what is measured next.
ROWS_ONLY = 1 << 40


def read_task(spec: FeedSpec, ingest: IngestConfig) -> Generator[pa.Table, None, None]:
    """The endless blocks of the read task a stream runs for ``spec`` (``EndlessRead`` for
    objects, ``ShardRead`` for shards), here outside Ray: with no key owner it lists for itself,
    as any read outside a Ray stream does. Closing it closes a shard feed; an object feed is the
    process's (``services.ingest.read.close_process_feeds`` closes it)."""
    from services.ingest.read import EndlessRead
    from services.ingest.shard_read import ShardRead

    if spec.resolved_kind() == "shards":
        return ShardRead(spec, ingest.chunk_images, ingest.max_object_bytes,
                         block_bytes=ROWS_ONLY)()
    return EndlessRead(spec, ingest.chunk_images, ingest.max_object_bytes,
                       block_bytes=ROWS_ONLY, fetch_threads=ingest.fetch_threads)()
