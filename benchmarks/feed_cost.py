"""Feed cost model: S3 requests a day, bytes per second and requests in flight of the object
feed and of the shard feed at a target rate, scaled from what the feeds' own request counters
(``seer_feed_requests_total{op}``) record on a short run against a local S3 server.

    python benchmarks/feed_cost.py --images-per-second 25600 --mean-image-kb 150 \\
        --latency-ms 50 --shard-images 10000 --refresh-seconds 600

Measured (a throwaway ``moto_server``; small generated images, since request counts do not
depend on image size):

- object feed: ``--local-images`` images read by the object read task (``EndlessRead``): GETs
  and HEADs per image. Then one refresh of the run's key owner (``KeyOwner``: the one listing
  of a run) over a bucket of ``--local-objects`` keys: LIST requests and the keys they listed.
  The read's own LISTs are left out (a read task outside Ray lists for itself; in a run, read
  tasks never list).
- shard feed: the same images as WebDataset tars of ``--local-shard-images``
  (``write_webdataset_shards``), named by a brace pattern, read by the shard read task
  (``ShardRead``, whole-shard visits): GETs and HEADs per shard visit
  (``seer_ingest_shard_visits_total``); one refresh of the owner's shard list (LISTs: none for
  a pattern); the tar bytes per image beyond the image's own (headers, JSON sidecar, and the
  tar's end padding, up to 10 kB, which small local tars spread over fewer images).

Scaled, with the rate, mean image size, latency, shard size and refresh interval as the only
inputs (the rest is the preset's):

- requests a day = images a day x requests per image; a shard feed's requests per image are
  its requests per visit over ``--shard-images`` (``feed.images_per_shard_visit`` null).
- the object feed's LISTs a day = the preset's ``feed.pool_size`` / keys per LIST x refreshes a
  day. At the preset a refresh lists ``pool_size`` keys in runs of one full page each (S3Feed's
  ``chunk`` is 1,000 keys for a pool of 16,000 or more), as the local refresh lists its bucket
  in full pages; runs from random starts rarely overlap in a bucket far larger than the pool
  (when they do, a refresh makes up to 3x the runs). A shard feed named by a glob or prefix
  instead of a pattern would list ceil(shards / 1,000) pages a refresh.
- bytes per second = rate x (mean image size + the shard overhead per image); kB and GB are
  decimal (10^3, 10^9 bytes), as stores bill them.
- requests in flight = requests per second x latency (Little's law), the latency being a
  request's whole time. A shard visit's GET also stays open while its images are read: one
  stream per read task (``ingest.read_tasks``).

Target: ``seer-rg256`` (deploy/configs/seer-rg256.yaml) trains 16 images per GPU per step and
sets no rate; 25,600 images/s is 512 GPUs at 50 images/s each (~3.1 steps/s), the rate issue 20
and ``services/ingest/keys.py`` size the key owner for. The preset gives ``feed.pool_size``
(1M), ``feed.refresh_seconds`` (600; ``--refresh-seconds`` overrides), ``ingest.read_tasks``
(64) and ``ingest.fetch_threads`` (8, the default).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyarrow as pa
from helpers import (
    counted,
    load_images,
    local_s3,
    read_task,
    requests_sent,
    upload_objects,
    upload_shards,
)

from seer_core.config import SeerConfig, load_config
from services.feed import FeedSpec

DAY_S = 86_400
PRESET = "seer-rg256"


@dataclass(frozen=True)
class Measured:
    """The counters of a local run (request deltas by op, from ``seer_feed_requests_total``)."""

    object_images: int  # images the object read task read
    object_requests: dict[str, float]  # GET, HEAD sent meanwhile
    object_refresh_lists: float  # LISTs of one refresh of the key owner
    object_keys_listed: int  # keys that refresh listed
    shard_images: int  # images the shard read task read
    shard_visits: float  # shard visits it started
    shard_requests: dict[str, float]  # GET, HEAD sent meanwhile
    shard_refresh_lists: float  # LISTs of one refresh of the owner's shard list
    shard_overhead_bytes: float  # tar bytes per image beyond the image's own


@dataclass(frozen=True)
class Target:
    """What the run needs: the inputs, and the preset's feed and ingest settings."""

    images_per_second: float
    mean_image_kb: float
    latency_ms: float
    shard_images: int
    refresh_seconds: float
    pool_size: int
    read_tasks: int
    fetch_threads: int


def scale(m: Measured, t: Target) -> dict[str, dict[str, float]]:
    """Per feed: requests a day by op, bytes per second, requests in flight (and, for shards,
    streams held open), from the measured counters."""
    images_a_day = t.images_per_second * DAY_S
    refreshes_a_day = DAY_S / t.refresh_seconds
    image_bytes = t.mean_image_kb * 1000
    per_image = {op: m.object_requests.get(op, 0.0) / m.object_images for op in ("GET", "HEAD")}
    per_visit = {op: m.shard_requests.get(op, 0.0) / m.shard_visits for op in ("GET", "HEAD")}
    lists_a_refresh = math.ceil(t.pool_size * m.object_refresh_lists / m.object_keys_listed)
    out = {
        "objects": {**{op: images_a_day * n for op, n in per_image.items()},
                    "LIST": lists_a_refresh * refreshes_a_day,
                    "bytes_per_s": t.images_per_second * image_bytes},
        "shards": {**{op: images_a_day * n / t.shard_images for op, n in per_visit.items()},
                   "LIST": m.shard_refresh_lists * refreshes_a_day,
                   "bytes_per_s": t.images_per_second * (image_bytes + m.shard_overhead_bytes),
                   "streams": float(t.read_tasks)},
    }
    for feed in out.values():
        per_second = sum(feed[op] for op in ("GET", "HEAD", "LIST")) / DAY_S
        feed["in_flight"] = per_second * t.latency_ms / 1000
    return out


def table(m: Measured, t: Target, res: dict[str, dict[str, float]]) -> str:
    """The model as a markdown table, with what was measured and the object feed's fetch
    threads against the concurrency it needs."""
    obj, shard = res["objects"], res["shards"]
    keys_per_list = m.object_keys_listed / max(m.object_refresh_lists, 1)
    rows = [
        ("measured on the local S3 server",
         f"{m.object_requests.get('GET', 0) / m.object_images:.3f} GET per image; "
         f"{keys_per_list:,.0f} keys per LIST",
         f"{m.shard_requests.get('GET', 0) / m.shard_visits:.2f} GET per shard visit; "
         f"{m.shard_refresh_lists:.0f} LIST per refresh; "
         f"{m.shard_overhead_bytes:,.0f} bytes per image of tar overhead"),
        *((f"{op} requests per day", f"{obj[op]:,.0f}", f"{shard[op]:,.0f}")
          for op in ("GET", "LIST", "HEAD")),
        ("bytes per second", f"{obj['bytes_per_s'] / 1e9:.2f} GB/s",
         f"{shard['bytes_per_s'] / 1e9:.2f} GB/s"),
        ("data read per day", f"{obj['bytes_per_s'] * DAY_S / 1e12:.0f} TB",
         f"{shard['bytes_per_s'] * DAY_S / 1e12:.0f} TB"),
        (f"requests in flight at {t.latency_ms:g} ms (Little's law)", f"{obj['in_flight']:,.0f}",
         f"{shard['in_flight']:,.2f}, and {shard['streams']:.0f} streaming GETs open "
         "(one per read task)"),
    ]
    head = (f"| {t.images_per_second:,.0f} images/s of {t.mean_image_kb:g} kB, "
            f"refresh every {t.refresh_seconds:g} s | object feed (pool of {t.pool_size:,} "
            f"keys) | shard feed (WebDataset tars of {t.shard_images:,} images, brace pattern) |"
            "\n|---|---:|---:|")
    lines = [head, *(f"| {a} | {b} | {c} |" for a, b, c in rows)]
    per_task = obj["in_flight"] / t.read_tasks
    cap = t.fetch_threads / (t.latency_ms / 1000) * t.read_tasks
    lines.append(f"\nObject feed: {obj['in_flight']:,.0f} requests in flight are "
                 f"{per_task:.1f} per read task at the preset's {t.read_tasks}; "
                 f"ingest.fetch_threads = {t.fetch_threads} caps the run at {cap:,.0f} "
                 "images/s at this latency.")
    return "\n".join(lines)


def spec_for(cfg: SeerConfig, uri: str, endpoint: str) -> FeedSpec:
    """The preset's feed spec, pointed at ``uri`` on the local server."""
    from services.ingest.read import feed_spec

    cfg.feed.uri, cfg.feed.endpoint_url = uri, endpoint
    return feed_spec(cfg)


def refresh_lists(spec: FeedSpec) -> tuple[float, int]:
    """LIST requests of one steady refresh of the run's key owner for ``spec``, and the keys (or
    shard names) it holds: the owner's first listing is left to finish, then one more is made."""
    from services.ingest.keys import KeyOwner

    owner = KeyOwner(spec)  # the owner actor's class, here in this process
    try:
        deadline = time.monotonic() + 60
        while owner.stats()["refreshes"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = requests_sent()["LIST"]
        owner.feed.refresh_now()
        return requests_sent()["LIST"] - before, int(owner.stats()["pool_size"])
    finally:
        owner.feed.close()


def read(blocks: Generator[pa.Table, None, None], images: int) -> tuple[int, Counter[str]]:
    """Reads whole blocks of a read task until ``images`` images; (images, requests sent)."""
    before, got = requests_sent(), 0
    try:
        while got < images:
            table = next(blocks)
            got += sum(1 for reason in table.column("reason").to_pylist() if not reason)
    finally:
        blocks.close()
    return got, requests_sent() - before


def measure(local_objects: int, local_images: int, shard_images: int, shards: int) -> Measured:
    """The local run: both feeds on one throwaway S3 server (see the module docstring)."""
    from services.ingest.read import close_process_feeds

    pictures = load_images(None, 8, side=96)
    cfg = load_config(PRESET)
    ing = cfg.ingest
    with local_s3() as endpoint:
        objects = spec_for(cfg, upload_objects(endpoint, pictures, local_objects), endpoint)
        tars = upload_shards(endpoint, pictures, shard_images, shards)
        shard_spec = spec_for(cfg, tars.uri, endpoint)

        object_images, object_requests = read(read_task(objects, ing), local_images)
        close_process_feeds()  # the read's own feed (and its listing) ends here
        object_lists, object_keys = refresh_lists(objects)

        visits = counted("seer_ingest_shard_visits_total")
        read_images, shard_requests = read(read_task(shard_spec, ing), local_images)
        visits = counted("seer_ingest_shard_visits_total") - visits
        shard_lists, _ = refresh_lists(shard_spec)
    return Measured(
        object_images, {op: object_requests[op] for op in ("GET", "HEAD")}, object_lists,
        object_keys, read_images, visits, {op: shard_requests[op] for op in ("GET", "HEAD")},
        shard_lists, (tars.stored_bytes - tars.image_bytes) / tars.images)


def sent(requests: dict[str, float]) -> str:
    return ", ".join(f"{n:.0f} {op}" for op, n in requests.items())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images-per-second", type=float, default=25_600.0,
                    help="the run's rate (default: seer-rg256 on 512 GPUs, 50 images/s each)")
    ap.add_argument("--mean-image-kb", type=float, default=150.0, help="mean encoded image, kB")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="one request's time")
    ap.add_argument("--shard-images", type=int, default=10_000, help="images per shard")
    ap.add_argument("--refresh-seconds", type=float, help="listing refresh (default: preset's)")
    ap.add_argument("--local-objects", type=int, default=2000, help="keys of the local bucket")
    ap.add_argument("--local-images", type=int, default=500, help="images read per feed")
    ap.add_argument("--local-shard-images", type=int, default=50, help="images per local tar")
    ap.add_argument("--local-shards", type=int, default=4, help="local tars")
    args = ap.parse_args(argv)

    cfg = load_config(PRESET)
    target = Target(args.images_per_second, args.mean_image_kb, args.latency_ms,
                    args.shard_images, args.refresh_seconds or cfg.feed.refresh_seconds,
                    cfg.feed.pool_size, cfg.ingest.read_tasks, cfg.ingest.fetch_threads)
    m = measure(args.local_objects, args.local_images, args.local_shard_images, args.local_shards)
    print(f"local run: object feed {m.object_images} images read with "
          f"{sent(m.object_requests)}, an owner refresh {m.object_refresh_lists:.0f} LIST for "
          f"{m.object_keys_listed} keys; shard feed {m.shard_images} images in "
          f"{m.shard_visits:.0f} visits with {sent(m.shard_requests)}, an owner refresh "
          f"{m.shard_refresh_lists:.0f} LIST", flush=True)
    print(table(m, target, scale(m, target)))


if __name__ == "__main__":
    main()
