"""Runs the pretraining service for a fixed number of steps twice and prints how close the real
stream gets to the compute-only ceiling.

    python benchmarks/e2e.py                               # local preset, sample images
    python benchmarks/e2e.py --steps 60 --set ingest.actors=2
    python benchmarks/e2e.py --config seer-rg256 --set feed.uri=s3://bucket/prefix ...

Run 1 is fed by the real stream (feed → read tasks → ingest actors → Ray Train shards); run 2 by
in-memory synthetic batches of the same shape (what the workers could do with free data). Both
use the same config, a fresh run name and a throwaway checkpoint folder, and skip their first
steps (start-up, first pass) in the rates. Prints both rates, their ratio and the data-wait
share of the streamed run, and the median and 99th-percentile step times of both runs (a
periodic stall moves the p99). Target (issue 10): ratio >= 0.95 and data-wait share < 2% with the
`local` preset.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import uuid

from seer_core.config import load_config
from services.driver.pretrain import run_pretraining


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="local")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--address", default=None, help="Ray cluster (default: local)")
    parser.add_argument("--verbose", action="store_true", help="show the runs' progress")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    results = {}
    with tempfile.TemporaryDirectory(prefix="seer-e2e-") as storage:
        for mode in ("stream", "synthetic"):
            cfg = load_config(args.config, [
                *args.overrides,
                f"train.max_steps={args.steps}",
                f"checkpoint.storage={storage}",
                f"checkpoint.run_name=e2e-{mode}-{uuid.uuid4().hex[:6]}",
                f"checkpoint.every_steps={args.steps * 10}",
                "checkpoint.every_minutes=0",
                "metrics.status_port=0",
            ])
            outcome = run_pretraining(
                cfg, address=args.address, synthetic=mode == "synthetic",
                out=sys.stdout if args.verbose else io.StringIO(), install_signals=False,
            )
            results[mode] = outcome.metrics
            print(f"{mode:>9}: {outcome.metrics.get('run_images_per_second', 0):8.2f} images/s, "
                  f"data wait {100 * outcome.metrics.get('run_data_wait_share', 0):5.1f}% "
                  f"({args.steps} steps, batch {cfg.train.batch_size} x "
                  f"{cfg.train.max_workers} workers, {cfg.ingest.actors or 'auto'} ingest actors)")
    stream = results["stream"].get("run_images_per_second", 0.0)
    ceiling = results["synthetic"].get("run_images_per_second", 0.0)
    ratio = stream / ceiling if ceiling else float("nan")
    share = results["stream"].get("run_data_wait_share", float("nan"))
    print(f"stream / ceiling = {ratio:.3f} (target >= 0.95); data-wait share "
          f"{100 * share:.1f}% (target < 2%)")
    for mode, m in results.items():
        p50, p99 = m.get("run_step_seconds_p50", 0.0), m.get("run_step_seconds_p99", 0.0)
        print(f"{mode:>9}: step time median {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms "
              f"(p99/median {p99 / p50 if p50 else float('nan'):.2f}; a pass-boundary stall "
              "shows here)")


if __name__ == "__main__":
    main()
