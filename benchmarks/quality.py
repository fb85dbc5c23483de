"""Does pretraining learn? Pretrain for a fixed time budget, then compare with random init.

    python benchmarks/quality.py                         # local preset, 20 minutes of pretraining
    python benchmarks/quality.py --minutes 5 --set model.trunk=resnet18
    python benchmarks/quality.py --skip-pretrain         # re-evaluate the last run's checkpoints

What it does, all through the commands a user runs:
1. writes an unlabelled pool (`seer seed` images, its own seed) and a labelled set
   (`seer seed --labelled`, another seed: none of its images is in the pool), once per workdir;
2. `seer pretrain --config PRESET --max-minutes M` on the pool (real local Ray, real ingest),
   a fresh run each time, checkpointing every M/5 minutes and keeping them all;
3. `seer eval --baseline random` on every checkpoint (kNN k=20/200 and the linear probe), into
   one results file, so the evaluator draws accuracy against images seen next to it;
4. prints raw-pixel kNN, the random-init trunk, each checkpoint, the loss against ln K, and the
   gain of the last checkpoint over random initialisation (target: >= +10 kNN top-1 points).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from seer_core.config import load_config  # noqa: E402
from services.storage import resolve_storage  # noqa: E402

POOL_SEED = 1_001
LABELLED_SEED = 2_002
RUN_NAME = "quality"
TARGET_GAIN = 10.0
_DONE = ".complete"


def ensure_data(workdir: Path, pool_count: int, train_per_class: int,
                val_per_class: int) -> tuple[Path, Path]:
    """The pool and the labelled set, generated once (a marker says a set is complete)."""
    from services.labelled_images import generate_labelled_images
    from services.sample_images import generate_sample_images

    pool, labelled = workdir / "pool", workdir / "labelled"
    if not (pool / _DONE).exists():
        shutil.rmtree(pool, ignore_errors=True)
        print(f"writing {pool_count} pool images to {pool}", flush=True)
        generate_sample_images(pool, pool_count, seed=POOL_SEED, progress=True)
        (pool / _DONE).touch()
    if not (labelled / _DONE).exists():
        shutil.rmtree(labelled, ignore_errors=True)
        print(f"writing the labelled set to {labelled}", flush=True)
        generate_labelled_images(labelled, train_per_class=train_per_class,
                                 val_per_class=val_per_class, seed=LABELLED_SEED)
        (labelled / _DONE).touch()
    return pool, labelled


def seer(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs the `seer` command as a user would (same interpreter, this repository)."""
    cmd = [sys.executable, "-m", "services.cli", *args]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return subprocess.run(cmd, cwd=REPO, env=env, text=True, check=False,
                          stdout=subprocess.PIPE if capture else None)


def pretrain(config: str, overrides: list[str], minutes: float) -> None:
    args = ["pretrain", "--config", config, "--max-minutes", str(minutes)]
    for item in overrides:
        args += ["--set", item]
    print(f"pretraining for {minutes:g} min: seer {' '.join(args)}", flush=True)
    done = seer(*args)
    if done.returncode != 0:
        raise SystemExit(f"seer pretrain failed with exit code {done.returncode}")


def evaluate(config: str, overrides: list[str], checkpoint: str, labelled: Path,
             results: Path) -> list[dict[str, Any]]:
    args = ["eval", "--config", config, "--checkpoint", checkpoint, "--data", str(labelled),
            "--protocol", "knn,linear", "--baseline", "random", "--results", str(results),
            "--json"]
    for item in overrides:
        args += ["--set", item]
    done = seer(*args, capture=True)
    if done.returncode != 0:
        raise SystemExit(f"seer eval failed on {checkpoint} (exit code {done.returncode})")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def raw_pixel_knn(labelled: Path, image_size: int, ks: list[int]) -> dict[str, float]:
    """kNN on the raw pixels: how far the classes are from separable without any features."""
    from seer_core.evaluation import knn_classify
    from services.labelled import load_labelled

    data = load_labelled(str(labelled), image_size=image_size)
    train = data.train.images.flatten(1).float()
    val = data.val.images.flatten(1).float()
    return {f"knn{k}": knn_classify(train, data.train.labels, val, data.val.labels, k=k,
                                    num_classes=data.num_classes)["top1"] for k in ks}


def top1(rows: list[dict[str, Any]], trunk: str, protocol: str) -> float | None:
    for row in rows:
        if (row["trunk"] == trunk and row["protocol"] == protocol
                and row["metric"] == "top1"):
            return float(row["value"])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="local", help="preset or YAML (default: local)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config overrides for pretraining and eval")
    parser.add_argument("--minutes", type=float, default=20.0, help="pretraining budget")
    parser.add_argument("--workdir", default="runs/quality", help="pool, labelled set, run")
    parser.add_argument("--pool-count", type=int, default=4000)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--skip-pretrain", action="store_true",
                        help="evaluate the checkpoints of the previous run in --workdir")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")

    workdir = Path(args.workdir).resolve()
    pool, labelled = ensure_data(workdir, args.pool_count, args.train_per_class,
                                 args.val_per_class)
    storage = workdir / "checkpoints"
    every = max(args.minutes / 5, 0.5)
    overrides = [
        f"feed.uri={pool}", f"checkpoint.storage={storage}", f"checkpoint.run_name={RUN_NAME}",
        "checkpoint.keep=100", f"checkpoint.every_minutes={every:g}", "metrics.status_port=0",
        *args.overrides,
    ]
    cfg = load_config(args.config, overrides)  # fails fast on a bad preset or override
    results = workdir / "results.jsonl"
    if not args.skip_pretrain:
        shutil.rmtree(storage / RUN_NAME, ignore_errors=True)
        results.unlink(missing_ok=True)
        start = time.monotonic()
        pretrain(args.config, overrides, args.minutes)
        print(f"pretraining took {(time.monotonic() - start) / 60:.1f} min (with start-up)")

    store = resolve_storage(str(storage), RUN_NAME)
    checkpoints = store.list_checkpoints()
    if not checkpoints:
        raise SystemExit(f"no checkpoint in {store.display}")
    results.unlink(missing_ok=True)
    ln_k = math.log(cfg.model.prototypes[0])
    raw = raw_pixel_knn(labelled, cfg.eval.image_size, cfg.eval.knn_k)
    print(f"\nlabelled set {labelled} at {cfg.eval.image_size} px; raw pixels: "
          + ", ".join(f"{k} {v:.1f}%" for k, v in raw.items()))
    print(f"{'step':>7} {'images':>8} {'loss':>7} {'ln K':>6} {'kNN20':>6} {'kNN200':>6} "
          f"{'linear':>6}   (top-1 %, checkpoint trunk)")
    rows: list[dict[str, Any]] = []
    for step, path in checkpoints:
        rows = evaluate(args.config, overrides, path, labelled, results)
        meta = store.read_meta(path)
        figures = [top1(rows, "checkpoint", p) for p in ("knn20", "knn200", "linear")]
        print(f"{step:>7} {meta.get('images_seen', 0):>8} {meta.get('loss', float('nan')):>7.4f} "
              f"{ln_k:>6.3f} " + " ".join(f"{v:>6.1f}" if v is not None else "     -"
                                          for v in figures), flush=True)
    print(f"{'random':>7} {0:>8} {'':>7} {'':>6} "
          + " ".join(f"{top1(rows, 'random', p) or float('nan'):>6.1f}"
                     for p in ("knn20", "knn200", "linear")) + "   (random-init trunk)")
    gain = (top1(rows, "checkpoint", "knn20") or 0.0) - (top1(rows, "random", "knn20") or 0.0)
    verdict = "met" if gain >= TARGET_GAIN else "NOT met"
    print(f"\ngain of the last checkpoint over random init: kNN20 {gain:+.1f} points "
          f"(target >= +{TARGET_GAIN:g}: {verdict})")
    print(f"results: {results}\nplot:    {results.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
