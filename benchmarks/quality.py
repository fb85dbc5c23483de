"""Does pretraining learn? Pretrain for a fixed time budget, then compare with random init.

    python benchmarks/quality.py                         # local preset, 20 minutes, generated set
    python benchmarks/quality.py --data real             # real images from Debian packages
    python benchmarks/quality.py --seeds 3               # the same budget with train.seed 0, 1, 2
    python benchmarks/quality.py --minutes 5 --set model.trunk=resnet18
    python benchmarks/quality.py --skip-pretrain         # re-evaluate the last run's checkpoints
    python benchmarks/quality.py --seeds 3 --keep-runs   # pretrain only seeds without a run yet

What it does, all through the commands a user runs:
1. writes an unlabelled pool and a labelled set, once per workdir (again when their options
   change). `--data generated` (the fast default): `seer seed` images and `seer seed
   --labelled` (other seeds: none of its images is in the pool). `--data real`: drawings from
   `tuxpaint-stamps-default`, a quarter of them on photos from `mate-backgrounds`
   (`services/images/real.py`; eight subject folders are the classes, every other stamp feeds
   the pool); refuses, with the apt-get command to run, when those packages are missing;
2. for each training seed, `seer pretrain --config PRESET --max-minutes M --set train.seed=S`
   on the pool (real local Ray, real ingest), a fresh run named per seed, checkpointing every
   M/5 minutes and keeping them all;
3. `seer eval --baseline random` on every checkpoint (kNN k = eval.knn_k and the linear probe),
   into one results file, so the evaluator draws accuracy against images seen next to it;
4. prints raw-pixel kNN, the random-init trunk, each checkpoint, the loss against ln K, and per
   seed the gain of the last checkpoint over random init, then mean ± std over the seeds (target:
   >= +10 kNN20 points on every seed, and above raw pixels); writes `summary.json` and
   `quality.png` (kNN20 against images seen, one line per seed) into the workdir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from seer_core.config import load_config  # noqa: E402
from services.labelled import LabelledSet, load_labelled  # noqa: E402
from services.storage import resolve_storage  # noqa: E402

POOL_SEED = 1_001
LABELLED_SEED = 2_002
REAL_SEED = 3_003
RUN_NAME = "quality"
TARGET_GAIN = 10.0
_DONE = ".complete"


def _fresh(folder: Path, params: dict[str, Any]) -> bool:
    """True when `folder` was completely written with these options (its marker holds them)."""
    marker = folder / _DONE
    return marker.exists() and marker.read_text() in ("", json.dumps(params, sort_keys=True))


def _mark(folder: Path, params: dict[str, Any]) -> None:
    (folder / _DONE).write_text(json.dumps(params, sort_keys=True))


def ensure_data(workdir: Path, pool_count: int, train_per_class: int,
                val_per_class: int) -> tuple[Path, Path]:
    """The generated pool and labelled set, written once (a marker says a set is complete)."""
    from services.images.labelled import generate_labelled_images
    from services.images.sample import generate_sample_images

    pool, labelled = workdir / "pool", workdir / "labelled"
    pool_params = {"data": "generated", "count": pool_count}
    if not _fresh(pool, pool_params):
        shutil.rmtree(pool, ignore_errors=True)
        print(f"writing {pool_count} pool images to {pool}", flush=True)
        generate_sample_images(pool, pool_count, seed=POOL_SEED, progress=True)
        _mark(pool, pool_params)
    labelled_params = {"data": "generated", "train": train_per_class, "val": val_per_class}
    if not _fresh(labelled, labelled_params):
        shutil.rmtree(labelled, ignore_errors=True)
        print(f"writing the labelled set to {labelled}", flush=True)
        generate_labelled_images(labelled, train_per_class=train_per_class,
                                 val_per_class=val_per_class, seed=LABELLED_SEED)
        _mark(labelled, labelled_params)
    return pool, labelled


def ensure_real_data(workdir: Path, pool_count: int,
                     stamps_per_class: int | None) -> tuple[Path, Path]:
    """The real pool and labelled set (services/images/real.py), written once; SystemExit with
    the apt-get command when the packages are not installed (nothing is installed here)."""
    from services.images import real as real_images

    pool, labelled = workdir / "pool", workdir / "labelled"
    # "version" 2: a quarter of the drawings on photos, four val views (services/images/real.py)
    params = {"data": "real", "count": pool_count, "stamps_per_class": stamps_per_class,
              "seed": REAL_SEED, "version": 2}
    if _fresh(pool, params) and _fresh(labelled, params):
        return pool, labelled
    try:
        real_images.check_sources(real_images.STAMPS_ROOT, real_images.BACKDROPS_ROOT)
        print(f"writing the real labelled set to {labelled} and {pool_count} pool images to "
              f"{pool}", flush=True)
        sets = real_images.write_real_sets(pool, labelled, pool_count=pool_count,
                                           seed=REAL_SEED, max_stamps_per_class=stamps_per_class,
                                           stamps_root=real_images.STAMPS_ROOT,
                                           backdrops_root=real_images.BACKDROPS_ROOT)
    except real_images.MissingPackagesError as exc:
        raise SystemExit(f"--data real: {exc}") from None
    print(sets.describe(), flush=True)
    _mark(pool, params)
    _mark(labelled, params)
    return pool, labelled


def seer(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs the `seer` command as a user would (same interpreter, this repository)."""
    cmd = [sys.executable, "-m", "services.cli", *args]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return subprocess.run(cmd, cwd=REPO, env=env, text=True, check=False,
                          stdout=subprocess.PIPE if capture else None)


def pretrain(config: str, overrides: list[str], minutes: float) -> None:
    args = ["pretrain", "--config", config, "--max-minutes", str(minutes),
            *(arg for item in overrides for arg in ("--set", item))]
    print(f"pretraining for {minutes:g} min: seer {' '.join(args)}", flush=True)
    done = seer(*args)
    if done.returncode != 0:
        raise SystemExit(f"seer pretrain failed with exit code {done.returncode}")


def evaluate(config: str, overrides: list[str], checkpoint: str, labelled: Path,
             results: Path) -> list[dict[str, Any]]:
    args = ["eval", "--config", config, "--checkpoint", checkpoint, "--data", str(labelled),
            "--protocol", "knn,linear", "--baseline", "random", "--results", str(results),
            "--json", *(arg for item in overrides for arg in ("--set", item))]
    done = seer(*args, capture=True)
    if done.returncode != 0:
        raise SystemExit(f"seer eval failed on {checkpoint} (exit code {done.returncode})")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def raw_pixel_knn(data: LabelledSet, ks: list[int]) -> dict[str, float]:
    """kNN on the raw pixels: how far the classes are from separable without any features.
    A k larger than the training split is left out, as `seer eval` does."""
    from seer_core.evaluation import knn_classify

    train = data.train.images.flatten(1).float()
    val = data.val.images.flatten(1).float()
    return {f"knn{k}": knn_classify(train, data.train.labels, val, data.val.labels, k=k,
                                    num_classes=data.num_classes)["top1"]
            for k in ks if k <= len(data.train.labels)}


def top1(rows: list[dict[str, Any]], trunk: str, protocol: str) -> float | None:
    return next((float(row["value"]) for row in rows if row["trunk"] == trunk
                 and row["protocol"] == protocol and row["metric"] == "top1"), None)


def run_names(data: str, seeds: list[int]) -> list[str]:
    """One run per training seed. A single seed keeps the name it always had (`quality`,
    `quality-real`), so `--skip-pretrain` still finds an earlier run."""
    base = RUN_NAME if data == "generated" else f"{RUN_NAME}-{data}"
    return [base] if len(seeds) == 1 else [f"{base}-seed{s}" for s in seeds]


def run_overrides(common: list[str], run: str, seed: int) -> list[str]:
    """The overrides of one seed's run: its own run name (own checkpoints) and train.seed,
    after the user's --set (whose train.seed is the first seed)."""
    return [*common, f"checkpoint.run_name={run}", f"train.seed={seed}"]


def evaluate_run(args: argparse.Namespace, overrides: list[str], run: str, storage: Path,
                 labelled: Path, results: Path, ln_k: float,
                 protocols: list[str]) -> dict[str, Any]:
    """Every checkpoint of `run`, printed as a table; the last one's and the baseline's
    figures. `protocols[0]` is the headline (kNN20), drawn against images seen."""
    store = resolve_storage(str(storage), run)
    checkpoints = store.list_checkpoints()
    if not checkpoints:
        raise SystemExit(f"no checkpoint in {store.display}")
    print(f"\nrun {run}\n{'step':>7} {'images':>8} {'loss':>7} {'ln K':>6} "
          + " ".join(f"{p:>6}" for p in protocols) + "   (top-1 %, checkpoint trunk)")
    rows: list[dict[str, Any]] = []
    curve: list[tuple[int, float]] = []
    meta: dict[str, Any] = {}
    for step, path in checkpoints:
        rows = evaluate(args.config, overrides, path, labelled, results)
        meta = store.read_meta(path)
        figures = [top1(rows, "checkpoint", p) for p in protocols]
        if figures[0] is not None:
            curve.append((int(meta.get("images_seen", 0)), figures[0]))
        print(f"{step:>7} {meta.get('images_seen', 0):>8} {meta.get('loss', float('nan')):>7.4f} "
              f"{ln_k:>6.3f} " + " ".join(f"{v:>6.1f}" if v is not None else "     -"
                                          for v in figures), flush=True)
    random_figures = [top1(rows, "random", p) for p in protocols]
    print(f"{'random':>7} {0:>8} {'':>7} {'':>6} "
          + " ".join(f"{v:>6.1f}" if v is not None else "     -" for v in random_figures)
          + "   (random-init trunk)")
    return {"run": run, "step": checkpoints[-1][0], "images_seen": meta.get("images_seen", 0),
            "loss": meta.get("loss"), "curve": curve,
            "checkpoint": {p: top1(rows, "checkpoint", p) for p in protocols},
            "random": {p: v for p, v in zip(protocols, random_figures)}}


def gains(run: dict[str, Any], protocols: list[str]) -> dict[str, float]:
    return {p: run["checkpoint"][p] - run["random"][p] for p in protocols
            if run["checkpoint"].get(p) is not None and run["random"].get(p) is not None}


def sampling_error(accuracies: list[float], n_val: int) -> float:
    """Standard error (points) of a difference of top-1 accuracies measured on `n_val` val
    images, from the binomial variance of each: the part of a gain that is the draw of the
    val set, not the pretraining. Treating the two figures as independent overstates it a
    little (both models see the same images), which errs on the side of caution."""
    return 100.0 * math.sqrt(sum((a / 100) * (1 - a / 100) for a in accuracies) / n_val)


def report(runs: list[dict[str, Any]], raw: dict[str, float],
           protocols: list[str], n_val: int) -> dict[str, Any]:
    """Per-seed gains over random init (the headline's with its sampling error on `n_val` val
    images), their mean ± std, and the verdicts (on the headline protocol, kNN20:
    `protocols[0]`); printed."""
    head = protocols[0]
    print(f"\n{'seed':>5} {'run':<22} " + " ".join(f"{p:>7}" for p in protocols)
          + f"   (gain of the last checkpoint over random init, points; ± {head}'s sampling "
          f"error on {n_val} val images)")
    per_seed = []
    errors = []
    for run in runs:
        g = gains(run, protocols)
        per_seed.append(g)
        pair = [run["checkpoint"].get(head), run["random"].get(head)]
        errors.append(sampling_error(pair, n_val) if None not in pair else None)
        print(f"{run['seed']:>5} {run['run']:<22} "
              + " ".join(f"{g[p]:>+7.1f}" if p in g else "      -" for p in protocols)
              + (f"   ± {errors[-1]:.1f}" if errors[-1] is not None else ""))
    summary: dict[str, Any] = {}
    for p in protocols:
        values = [g[p] for g in per_seed if p in g]
        if values:
            # population std: 0.0 for one seed
            summary[p] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}
    print(f"{'mean':>5} {'± std over ' + str(len(runs)) + ' seed(s)':<22} "
          + " ".join(f"{summary[p]['mean']:>+7.1f}" if p in summary else "      -"
                     for p in protocols))
    print(f"{'':>5} {'':<22} " + " ".join(f"{'±' + format(summary[p]['std'], '.1f'):>7}"
                                         if p in summary else "      -" for p in protocols))
    met = sum(1 for g in per_seed if g.get(head, -math.inf) >= TARGET_GAIN)
    above_raw = sum(1 for run in runs if head in raw
                    and (run["checkpoint"].get(head) or -math.inf) > raw[head])
    print(f"\n{head} gain >= +{TARGET_GAIN:g}: {met} of {len(runs)} seed(s) "
          f"({'met' if met == len(runs) else 'NOT met'}); above raw pixels "
          f"({raw.get(head, float('nan')):.1f}%): {above_raw} of {len(runs)}")
    if len(runs) == 1:  # the line a single run always printed
        gain = per_seed[0].get(head, 0.0)
        print(f"gain of the last checkpoint over random init: {head} {gain:+.1f} points "
              f"(target >= +{TARGET_GAIN:g}: {'met' if gain >= TARGET_GAIN else 'NOT met'})")
    return {"per_seed": [{"seed": r["seed"], "run": r["run"], "step": r["step"],
                          "images_seen": r["images_seen"], "loss": r["loss"],
                          "checkpoint": r["checkpoint"], "random": r["random"], "gain": g,
                          "gain_sampling_error": e}
                         for r, g, e in zip(runs, per_seed, errors)],
            "gain": summary, "raw_pixels": raw, "target_met": met, "above_raw": above_raw}


def plot_seeds(runs: list[dict[str, Any]], raw: dict[str, float], out: Path, title: str,
               head: str) -> None:
    """`head` (kNN20) against images seen, one line per seed, random init dashed, raw pixels
    dotted."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    try:
        colours = plt.get_cmap("tab10")
        for i, run in enumerate(runs):
            if run["curve"]:
                xs, ys = zip(*sorted(run["curve"]))
                ax.plot(xs, ys, marker="o", markersize=3, color=colours(i % 10),
                        label=f"seed {run['seed']}")
            if run["random"].get(head) is not None and i == 0:
                ax.axhline(run["random"][head], color="grey", linestyle="--", linewidth=1,
                           label="random init")
        if head in raw:
            ax.axhline(raw[head], color="black", linestyle=":", linewidth=1,
                       label="raw pixels")
        ax.set_xlabel("images seen")
        ax.set_ylabel(f"{head} top-1 accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="local", help="preset or YAML (default: local)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config overrides for pretraining and eval")
    parser.add_argument("--data", choices=("generated", "real"), default="generated",
                        help="generated shapes (default, needs nothing) or real images from "
                        "Debian packages (tuxpaint-stamps-default, mate-backgrounds)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="training seeds: train.seed S, S+1, ... (S from the config), one "
                        "run each with the same budget; per-seed and mean ± std gains")
    parser.add_argument("--minutes", type=float, default=20.0, help="pretraining budget per seed")
    parser.add_argument("--workdir", help="pool, labelled set, runs "
                        "(default: runs/quality, or runs/quality-real with --data real)")
    parser.add_argument("--pool-count", type=int, default=4000)
    parser.add_argument("--train-per-class", type=int, default=100, help="--data generated")
    parser.add_argument("--val-per-class", type=int, default=500,
                        help="--data generated; 500 (5,000 val images) puts the sampling error "
                        "of a kNN20 figure near 0.5 points; with 50 it was ~1.7 "
                        "(benchmarks/eval_noise.py)")
    parser.add_argument("--stamps-per-class", type=int, default=None,
                        help="--data real: use only this many stamp groups per class (tiny "
                        "sets for tests; default: all)")
    parser.add_argument("--skip-pretrain", action="store_true",
                        help="evaluate the checkpoints of the previous run(s) in --workdir")
    parser.add_argument("--keep-runs", action="store_true",
                        help="pretrain only the seeds whose run has no checkpoint in --workdir "
                        "yet (finish an interrupted --seeds benchmark, or add seeds to one)")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")

    default_workdir = "runs/quality" if args.data == "generated" else f"runs/quality-{args.data}"
    workdir = Path(args.workdir or default_workdir).resolve()
    if args.data == "real":
        pool, labelled = ensure_real_data(workdir, args.pool_count, args.stamps_per_class)
        set_name = "real drawings (tuxpaint stamps, a quarter on mate-backgrounds photos)"
    else:
        pool, labelled = ensure_data(workdir, args.pool_count, args.train_per_class,
                                     args.val_per_class)
        set_name = "generated shapes"
    storage = workdir / "checkpoints"
    every = max(args.minutes / 5, 0.5)
    common = [
        f"feed.uri={pool}", f"checkpoint.storage={storage}", "checkpoint.keep=100",
        f"checkpoint.every_minutes={every:g}", "metrics.status_port=0", *args.overrides,
    ]
    cfg = load_config(args.config, common)  # fails fast on a bad preset or override
    seeds = [cfg.train.seed + i for i in range(args.seeds)]
    runs = list(zip(seeds, run_names(args.data, seeds)))
    results = workdir / "results.jsonl"
    if not args.skip_pretrain:
        results.unlink(missing_ok=True)
        for seed, run in runs:
            if args.keep_runs and resolve_storage(str(storage), run).list_checkpoints():
                print(f"keeping run {run} (--keep-runs): it has checkpoints", flush=True)
                continue
            shutil.rmtree(storage / run, ignore_errors=True)
            start = time.monotonic()
            pretrain(args.config, run_overrides(common, run, seed), args.minutes)
            print(f"pretraining {run} took {(time.monotonic() - start) / 60:.1f} min "
                  "(with start-up)")

    results.unlink(missing_ok=True)
    ln_k = math.log(cfg.model.prototypes[0])
    data = load_labelled(str(labelled), image_size=cfg.eval.image_size)
    raw = raw_pixel_knn(data, cfg.eval.knn_k)
    print(f"\nlabelled set: {set_name}, {data.num_classes} classes, {len(data.train.labels)} "
          f"train / {len(data.val.labels)} val at {cfg.eval.image_size} px; raw pixels: "
          + ", ".join(f"{k} {v:.1f}%" for k, v in raw.items()))
    # The ks `seer eval` evaluates on this set (those that fit it), kNN20 first: the headline.
    knn = [f"knn{k}" for k in sorted(cfg.eval.knn_k, key=lambda k: (k != 20, k))
           if k <= len(data.train.labels)]
    protocols = [*knn, "linear"]
    measured = []
    for seed, run in runs:
        figures = evaluate_run(args, run_overrides(common, run, seed), run, storage, labelled,
                               results, ln_k, protocols)
        measured.append({**figures, "seed": seed})
    summary = report(measured, raw, protocols, len(data.val.labels))
    summary.update({"data": args.data, "set": set_name, "config": args.config,
                    "minutes": args.minutes, "seeds": seeds, "overrides": args.overrides,
                    "classes": data.num_classes, "train": len(data.train.labels),
                    "val": len(data.val.labels), "image_size": cfg.eval.image_size})
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    plot = workdir / "quality.png"
    plot_seeds(measured, raw, plot, f"{args.config} preset, {args.minutes:g} min, "
               f"{len(seeds)} seed(s)\n{set_name}, {data.num_classes} classes", protocols[0])
    print(f"results: {results}\nplot:    {results.with_suffix('.png')} (last run), "
          f"{plot} (every seed)\nsummary: {workdir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
