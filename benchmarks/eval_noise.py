"""How much of a kNN20 figure is the draw of the validation set, not the trunk?

    python benchmarks/eval_noise.py --data runs/eval-noise/labelled \\
        runs/quality/checkpoints/quality/step_000000002500 [more step folders ...]

The quality benchmark's verdict (issue 18) is a difference of two kNN20 figures, a checkpoint's
and the random-init trunk's, each measured on one validation set. A figure measured on n images
moves with the draw of those images by about sqrt(p (1 - p) / n): at 15% and 500 images that is
1.6 points, so a gain read on 500 images is ±2.3 before any pretraining noise, and a baseline
that happens to be drawn low flatters every gain measured against it. This measures it rather
than trusting the binomial: on a labelled set with many val images per class (written here,
with `seer seed --labelled`'s generator and the quality benchmark's seed, when `--data` is
missing: `--val-per-class` images per class, of which the first 50 are the quality benchmark's
old 50-per-class val set), it prints for the random-init trunks of `--random-seeds` init seeds
and for each checkpoint: kNN20 on the whole val split, on the first `--slice-per-class` images of
each class, and the mean, standard deviation and range over disjoint slices of that size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from seer_core.checkpoint import load_state  # noqa: E402
from seer_core.evaluation.features import extract_features, frozen_trunk  # noqa: E402
from seer_core.evaluation.knn import knn_classify  # noqa: E402
from seer_core.evaluation.trunks import random_trunk, trunk_from_checkpoint  # noqa: E402
from services.labelled import LabelledSet, load_labelled  # noqa: E402

KNN_K = 20
#: The quality benchmark's labelled-set seed (benchmarks/quality.py LABELLED_SEED): the same
#: generator and seed draw the same images, so the first 50 val images per class are its old set.
LABELLED_SEED = 2_002


def slices(labels: torch.Tensor, per_class: int) -> list[torch.Tensor]:
    """Disjoint index sets holding `per_class` val images of every class each, in file order."""
    by_class = [torch.nonzero(labels == c).flatten() for c in range(int(labels.max()) + 1)]
    count = min(len(i) for i in by_class) // per_class
    return [torch.cat([i[s * per_class:(s + 1) * per_class] for i in by_class])
            for s in range(count)]


def measure(name: str, trunk: torch.nn.Module, data: LabelledSet,
            parts: list[torch.Tensor]) -> str:
    features = frozen_trunk(trunk, "res5")
    train = extract_features(features, data.train.images, device="cpu", batch_size=256)
    val = extract_features(features, data.val.images, device="cpu", batch_size=256)

    def knn(rows: torch.Tensor | None = None) -> float:
        v, y = (val, data.val.labels) if rows is None else (val[rows], data.val.labels[rows])
        return knn_classify(train, data.train.labels, v, y, k=KNN_K,
                            num_classes=data.num_classes)["top1"]

    figures = [knn(rows) for rows in parts]
    spread = (f"sd {statistics.stdev(figures):4.2f}  range {min(figures):5.1f}-"
              f"{max(figures):5.1f}" if len(figures) > 1 else "(one slice)")
    return (f"{name:<44} {knn():6.1f} {figures[0]:8.1f} {statistics.fmean(figures):7.1f}  "
            f"{spread}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path,
                        help="checkpoint step folders (or their state.pt)")
    parser.add_argument("--data", type=Path, default=Path("runs/eval-noise/labelled"),
                        help="labelled set; written (generated shapes) when missing")
    parser.add_argument("--val-per-class", type=int, default=1000,
                        help="val images per class when the set is written (default 1000)")
    parser.add_argument("--slice-per-class", type=int, default=50,
                        help="val images per class in one slice (default 50: the quality "
                        "benchmark's old val set)")
    parser.add_argument("--random-seeds", type=int, default=3,
                        help="random-init trunks measured, init seeds 0, 1, ... (default 3)")
    parser.add_argument("--trunk", default="small", help="random-init trunk when no checkpoint "
                        "is given (default: small, the local preset's)")
    parser.add_argument("--size", type=int, default=64, help="image size (default 64)")
    args = parser.parse_args(argv)
    if args.slice_per_class < 1 or args.val_per_class < args.slice_per_class:
        parser.error("need 1 <= --slice-per-class <= --val-per-class")
    if args.random_seeds < 0:
        parser.error("--random-seeds must be >= 0")
    if not args.data.exists():
        from services.images.labelled import generate_labelled_images

        print(f"writing the labelled set to {args.data} ({args.val_per_class} val per class)",
              flush=True)
        generate_labelled_images(args.data, train_per_class=100,
                                 val_per_class=args.val_per_class, seed=LABELLED_SEED)
    data = load_labelled(str(args.data), image_size=args.size)
    parts = slices(data.val.labels, args.slice_per_class)
    if not parts:
        raise SystemExit(f"{args.data}: fewer than {args.slice_per_class} val images in a class")
    print(f"labelled set {args.data}: {len(data.train)} train / {len(data.val)} val images, "
          f"{data.num_classes} classes, {args.size} px; {len(parts)} slices of "
          f"{args.slice_per_class} per class\nkNN{KNN_K} top-1 (%)"
          f"{'':<28} all val  slice 1  slices: mean, sd, range", flush=True)
    # The first checkpoint names the trunk of the random-init baselines.
    first = trunk_from_checkpoint(load_state(args.checkpoints[0])) if args.checkpoints else None
    trunk_name = first[1].model.trunk if first is not None else args.trunk
    for seed in range(args.random_seeds):
        print(measure(f"random init ({trunk_name}, seed {seed})", random_trunk(trunk_name, seed),
                      data, parts), flush=True)
    for i, path in enumerate(args.checkpoints):
        # One trunk in memory at a time: a RegNetY-256GF checkpoint is ~5 GB.
        trunk = first[0] if first is not None and i == 0 else (
            trunk_from_checkpoint(load_state(path))[0])
        first = None
        print(measure(str(path), trunk, data, parts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
