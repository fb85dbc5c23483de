"""Ingest benchmark: what the ingest stage costs on top of multi-crop, and how actors scale.

1. Per core, single thread, same images in memory: images/s of ``build_multicrop`` alone and of
   ``Cropper.process_bytes`` (guards, metrics, counting, collation into a batch). The
   ingest overhead is the relative slowdown; the target is <= 15 %.
2. End to end: N ingest actors (``--actors 1 2``) behind the Ray Data stream, reading from an S3
   server (a local ``moto_server`` with the images uploaded, or ``--s3 s3://bucket/prefix`` with
   ``--endpoint``), one never-ending execution per N. Reports the time to the first batch,
   images/s in steady state (after the first batch), and the 1 -> 2 actor scaling.

    python benchmarks/ingest.py                      # 40 generated 1080-px photos
    python benchmarks/ingest.py --images DIR --seconds 20 --actors 1 2 4

Figures depend on the machine and on whatever else runs on it: quote them with both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from helpers import load_images

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


def upload(endpoint: str, images: list[tuple[str, bytes]]) -> str:
    """Puts the images into a fresh bucket of the server at `endpoint`; returns their prefix."""
    from tests.s3server import make_client, put_objects

    client = make_client(endpoint)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    put_objects(client, bucket, {f"images/{name}": data for name, data in images})
    return f"s3://{bucket}/images/"


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
    ap.add_argument("--rounds", type=int, default=3, help="interleaved A/B rounds (per core)")
    ap.add_argument("--batch", type=int, default=16, help="images per ingest batch")
    ap.add_argument("--chunk", type=int, default=32, help="keys a read task draws at a time")
    ap.add_argument("--actors", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--s3", help="s3://bucket/prefix of an existing bucket (else a local moto)")
    ap.add_argument("--endpoint", help="S3 endpoint URL for --s3")
    ap.add_argument("--skip-ray", action="store_true", help="only the per-core comparison")
    args = ap.parse_args(argv)

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

    if args.skip_ray or not args.actors:
        return
    print("end to end (S3 -> read tasks -> ingest actors -> iter_torch_batches):", flush=True)
    with contextlib.ExitStack() as stack:
        uri, endpoint = args.s3, args.endpoint
        if not args.s3:  # a throwaway moto_server on 127.0.0.1, the tests' own launcher
            from tests.s3server import MotoServer

            dummy = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
            for k, v in dummy.items():
                os.environ.setdefault(k, v)
            endpoint = stack.enter_context(MotoServer()).endpoint_url
            uri = upload(endpoint, images)
        res = end_to_end(uri, endpoint, sorted(set(args.actors)), args.recipe, args.seconds,
                         args.chunk, args.batch)
        if 1 in res and 2 in res and res[1]["steady"]:
            print(f"  scaling 1 -> 2 actors: x{res[2]['steady'] / res[1]['steady']:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
