"""Ingest benchmark: what the ingest stage costs on top of multi-crop, what each feed's read path
costs an ingest core, and how actors scale.

1. Per core, single thread, same images in memory: images/s of ``build_multicrop`` alone and of
   ``Cropper.process_bytes`` (guards, metrics, counting, collation into a batch). The
   ingest overhead is the relative slowdown; the target is <= 15 %.
2. Read path per ingest core (``--feed objects|shards|both``): the same images on an S3 server
   as one object each (the object feed: a GET per image) and as WebDataset tars
   (``write_webdataset_shards``: the shard feed, one streaming GET per shard visit), each read by
   its read task (``EndlessRead`` / ``ShardRead``, as the stream runs them) into the same
   ``Cropper`` on one thread, in interleaved rounds. Reports images/s, images per CPU-second
   of the process (the object feed's fetch threads included) and GETs per 1,000 images from the
   feeds' own request counters (``seer_feed_requests_total{op}``). Targets: the shard feed's
   images/s per core at least the object feed's, its GETs per 1,000 images 100x fewer.
3. End to end: N ingest actors (``--actors 1 2``) behind the Ray Data stream, for each feed,
   reading from an S3 server (a local ``moto_server`` with the images uploaded, or ``--s3
   s3://bucket/prefix`` with ``--endpoint``, objects only), one never-ending execution per N.
   Reports the time to the first batch, images/s in steady state (after the first batch), and
   the 1 -> 2 actor scaling.

    python benchmarks/ingest.py                      # 40 generated 1080-px photos, both feeds
    python benchmarks/ingest.py --skip-ray --rounds 6 --shard-images 250
    python benchmarks/ingest.py --images DIR --seconds 20 --actors 1 2 4 --feed objects

Figures depend on the machine and on whatever else runs on it: quote them with both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyarrow as pa
import torch
from helpers import (
    Shards,
    load_images,
    local_s3,
    read_task,
    requests_sent,
    upload_objects,
    upload_shards,
)

from seer_core.augment import build_multicrop
from seer_core.config import SeerConfig, config_from_dict
from services.ingest.crop import Cropper


def bench_cfg(recipe: str, **ingest: Any) -> SeerConfig:
    return config_from_dict(
        {"augment": {"recipe": recipe}, "ingest": {"max_object_bytes": 64 << 20, **ingest}}
    )


def per_core(images: list[tuple[str, bytes]], recipe: str, seconds: float, rounds: int,
             batch: int) -> dict[str, float]:
    """Single-thread images/s of multi-crop alone vs the ingest worker, interleaved rounds.

    Rounds alternate A/B so that load from other processes hits both alike; the best round of
    each is reported (the least disturbed), with the median alongside.
    """
    torch.set_num_threads(1)
    multicrop = build_multicrop(recipe, seed=0)
    worker = Cropper(bench_cfg(recipe), seed=0)
    per_round = seconds / (2 * rounds)
    datas = [d for _, d in images]

    def run_multicrop() -> float:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < per_round:
            for data in datas:
                multicrop(data)
                count += 1
        return count / (time.perf_counter() - start)

    def run_worker() -> float:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < per_round:
            for i in range(0, len(images), batch):
                result = worker.process_bytes(images[i : i + batch])
                count += len(result.keys)
        return count / (time.perf_counter() - start)

    run_multicrop(), run_worker()  # warm-up: caches, allocator, lazy imports
    a, b = [], []
    for _ in range(rounds):
        a.append(run_multicrop())
        b.append(run_worker())
    return {
        "multicrop_best": max(a), "worker_best": max(b),
        "multicrop_median": statistics.median(a), "worker_median": statistics.median(b),
    }


def read_path(uris: dict[str, str], endpoint: str | None, recipe: str, seconds: float,
              rounds: int, batch: int, chunk: int) -> dict[str, dict[str, float]]:
    """Per feed: images/s of its read task (``helpers.read_task``: blocks of ``chunk`` rows, so a
    round ends with no request in flight) into one ``Cropper`` (one thread), the images per CPU
    second of this process, and GETs per 1,000 images (``seer_feed_requests_total``).

    Rounds alternate between the feeds, after a warm-up round each (listing, connections, the
    shard feed's shuffle buffer), so that load from other processes hits them alike; the best
    round is reported with the median. CPU time is the whole process's, so the object feed's
    fetch threads (botocore's work per request) count against it: that is what an ingest core
    pays. The S3 server's own CPU is not in it (on a small machine it still takes cores).
    """
    from services.ingest.read import close_process_feeds, feed_spec

    torch.set_num_threads(1)
    cfg = bench_cfg(recipe, chunk_images=chunk)
    cropper = Cropper(cfg, seed=0)
    per_round = seconds / (len(uris) * rounds)
    blocks = {}
    for name, uri in uris.items():
        cfg.feed.uri, cfg.feed.endpoint_url = uri, endpoint
        blocks[name] = read_task(feed_spec(cfg), cfg.ingest)

    def crop(table: pa.Table) -> int:
        rows = zip(*(table.column(c).to_pylist() for c in ("key", "data", "reason")), strict=True)
        return len(cropper.process_fetched((k, d, r or None) for k, d, r in rows).keys)

    def run(name: str) -> tuple[int, float, float, float]:
        """One round: (images, seconds, CPU seconds, GETs)."""
        gets, cpu, start = requests_sent()["GET"], time.process_time(), time.perf_counter()
        images = 0
        while time.perf_counter() - start < per_round:
            table = next(blocks[name])
            images += sum(crop(table.slice(i, batch)) for i in range(0, table.num_rows, batch))
        return (images, time.perf_counter() - start, time.process_time() - cpu,
                requests_sent()["GET"] - gets)

    done: dict[str, list[tuple[int, float, float, float]]] = {name: [] for name in uris}
    try:
        for name in uris:
            run(name)  # warm-up
        for _ in range(rounds):
            for name in uris:
                done[name].append(run(name))
    finally:
        for it in blocks.values():
            it.close()
        close_process_feeds()  # the object feed's
    out = {}
    for name, runs in done.items():
        rates = [images / wall for images, wall, _, _ in runs]
        images = sum(r[0] for r in runs)
        out[name] = {"best": max(rates), "median": statistics.median(rates),
                     "per_cpu_s": images / max(sum(r[2] for r in runs), 1e-9),
                     "gets_per_1000": 1000 * sum(r[3] for r in runs) / max(images, 1)}
    return out


def print_read_path(res: dict[str, dict[str, float]], labels: dict[str, str]) -> None:
    """The read-path figures as a markdown table, and the shard feed against the object feed."""
    print("| feed | images/s per core, best (median) | images per CPU-second "
          "| GETs per 1,000 images |\n|---|---:|---:|---:|")
    for name, r in res.items():
        print(f"| {labels[name]} | {r['best']:.1f} ({r['median']:.1f}) | {r['per_cpu_s']:.1f} "
              f"| {r['gets_per_1000']:.1f} |")
    if {"objects", "shards"} <= res.keys():
        obj, shard = res["objects"], res["shards"]
        fewer = (f"{obj['gets_per_1000'] / shard['gets_per_1000']:.0f}x fewer"
                 if shard["gets_per_1000"] else "none in the measured rounds (raise --seconds)")
        print(f"  shard feed vs object feed: images/s x{shard['best'] / obj['best']:.2f} "
              f"(median x{shard['median'] / obj['median']:.2f}, per CPU-second "
              f"x{shard['per_cpu_s'] / obj['per_cpu_s']:.2f}; target >= 1), GETs per 1,000 "
              f"images {fewer} (target >= 100x)", flush=True)


def end_to_end(uri: str, endpoint: str | None, actors: list[int], recipe: str, seconds: float,
               chunk: int, batch: int) -> dict[int, dict[str, float]]:
    """Images/s out of the endless stream with N ingest actors, for each N.

    ``first``: seconds from building the stream to its first batch (actor start-up included);
    ``steady``: images per second after the first batch, over ``seconds``.
    """
    import ray

    from services.driver.local_ray import start_local_ray
    from services.ingest.stream import build_stream

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # One CPU per ingest worker plus one for the read tasks (0.25 CPU each).
    start_local_ray(num_cpus=max(actors) + 1, log_to_driver=False, logging_level="ERROR")
    out: dict[int, dict[str, float]] = {}
    try:
        for n in actors:
            cfg = bench_cfg(recipe, actors=n, cpus_per_actor=1.0, read_tasks=2,
                            chunk_images=chunk, read_task_cpus=0.25)
            cfg.feed.uri = uri
            cfg.feed.endpoint_url = endpoint
            cfg.train.batch_size = batch
            start = time.perf_counter()
            ds = build_stream(cfg, actors=n)
            first = None
            rows = 0
            batches = iter(ds.iter_torch_batches(batch_size=batch, drop_last=False))
            try:
                for b in batches:
                    now = time.perf_counter()
                    if first is None:
                        first = now
                        continue
                    rows += b["crops_224"].shape[0]
                    if now - first >= seconds:
                        break
            finally:
                batches.close()  # an endless stream: stop it (actors, read tasks) explicitly
            steady_s = time.perf_counter() - (first or start)
            out[n] = {"first": (first or start) - start,
                      "steady": rows / steady_s if steady_s else 0.0}
            print(f"  {n} actor(s): {out[n]['steady']:.1f} img/s steady, first "
                  f"batch after {out[n]['first']:.1f} s", flush=True)
    finally:
        ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", help="folder of images (default: generate --n photos)")
    ap.add_argument("--n", type=int, default=40, help="images to use / generate")
    ap.add_argument("--side", type=int, default=1080, help="side of generated photos")
    ap.add_argument("--recipe", default="seer")
    ap.add_argument("--seconds", type=float, default=12.0, help="time per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds each")
    ap.add_argument("--batch", type=int, default=16, help="images per ingest batch")
    ap.add_argument("--chunk", type=int, default=32, help="keys a read task draws at a time")
    ap.add_argument("--feed", choices=("objects", "shards", "both"), default="both",
                    help="the feed(s) whose read path and stream are measured")
    ap.add_argument("--shard-images", type=int, default=250, help="images per WebDataset tar")
    ap.add_argument("--shards", type=int, default=2, help="tars written (the images cycled)")
    ap.add_argument("--actors", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--s3", help="s3://bucket/prefix of existing objects (else a local moto)")
    ap.add_argument("--endpoint", help="S3 endpoint URL for --s3")
    ap.add_argument("--skip-ray", action="store_true", help="no Ray stream (per core, read path)")
    args = ap.parse_args(argv)
    feeds = ["objects", "shards"] if args.feed == "both" else [args.feed]
    if args.s3 and "shards" in feeds:
        ap.error("--s3 names objects; shards are written to the local server: add --feed objects")

    images = load_images(args.images, args.n, args.side)
    mean_kb = sum(len(d) for _, d in images) / len(images) / 1024
    print(f"{len(images)} images, {mean_kb:.0f} KiB on average, recipe {args.recipe}, "
          f"{os.cpu_count()} CPUs visible (load avg {os.getloadavg()[0]:.1f})", flush=True)

    r = per_core(images, args.recipe, args.seconds, args.rounds, args.batch)
    overhead = r["multicrop_best"] / r["worker_best"] - 1
    print("per core (1 thread):")
    print(f"  build_multicrop alone: {r['multicrop_best']:.1f} img/s "
          f"(median {r['multicrop_median']:.1f})")
    print(f"  Cropper:               {r['worker_best']:.1f} img/s "
          f"(median {r['worker_median']:.1f})")
    print(f"  ingest overhead:       {100 * overhead:+.1f} % (target <= 15 %)", flush=True)

    with contextlib.ExitStack() as stack:
        endpoint = args.endpoint if args.s3 else stack.enter_context(local_s3())
        uris, labels = {}, {}
        if "objects" in feeds:
            uris["objects"] = args.s3 or upload_objects(endpoint, images)
            labels["objects"] = "objects: one GET per image"
        if "shards" in feeds:
            shards: Shards = upload_shards(endpoint, images, args.shard_images, args.shards)
            uris["shards"] = shards.uri
            labels["shards"] = (f"shards: {args.shards} WebDataset tars of {args.shard_images} "
                                "images, whole-shard visits")
        print(f"read path per ingest core (S3 -> read task -> Cropper, 1 thread, "
              f"{args.rounds} interleaved rounds of {args.seconds / len(uris) / args.rounds:.1f} "
              "s per feed):", flush=True)
        print_read_path(read_path(uris, endpoint, args.recipe, args.seconds, args.rounds,
                                  args.batch, args.chunk), labels)
        if args.skip_ray or not args.actors:
            return
        for name, uri in uris.items():
            print(f"end to end, {name} (S3 -> read tasks -> ingest actors -> "
                  "iter_torch_batches):", flush=True)
            res = end_to_end(uri, endpoint, sorted(set(args.actors)), args.recipe, args.seconds,
                             args.chunk, args.batch)
            if 1 in res and 2 in res and res[1]["steady"]:
                print(f"  scaling 1 -> 2 actors: x{res[2]['steady'] / res[1]['steady']:.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
