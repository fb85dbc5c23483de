"""What do a trunk's features vary with? Principal components of res5 against image statistics.

    python benchmarks/feature_pcs.py --data runs/quality/labelled \\
        runs/quality/checkpoints/quality/step_000000003000 [more step folders ...]

kNN and the linear probe say *how much* class a trunk's features carry; they do not say what
else fills them. kNN votes with cosine similarity, so whatever dominates the feature variance
decides the neighbours: a trunk whose linear probe rises while its kNN stalls (issue 18) keeps
the class in small directions and something else in the big ones. For the random-init trunk of
the first checkpoint's architecture and for each checkpoint, this prints, on the labelled
set's training split at `--size` px:

- kNN20 top-1 (train split against val split, the evaluator's protocol) and the effective rank
  (exp of the entropy of the variance shares: how many directions the features really use);
- for each of the top `--components` principal components: its share of the variance, how much
  of it the class explains (ANOVA R²: 0 = none, 1 = all), and its correlation with simple
  statistics of the image (brightness, contrast, saturation, red-blue, green-magenta, edge
  strength). A big component that follows a colour statistic and not the class is a colour
  shortcut the augmentations left open.
"""

from __future__ import annotations

import argparse
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
from seer_core.swav import effective_rank  # noqa: E402
from services.labelled import LabelledSet, load_labelled  # noqa: E402

KNN_K = 20


def image_statistics(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image [N] statistics of uint8 [N, 3, H, W] images: what colour jitter changes
    (brightness, contrast, saturation, the two hue axes) and what it does not (edges)."""
    x = images.float() / 255.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return {
        "bright": x.mean((1, 2, 3)),
        "contr": x.std((1, 2, 3)),
        "satur": (x.max(1).values - x.min(1).values).mean((1, 2)),
        "red-blue": (r - b).mean((1, 2)),
        "green-mag": (g - (r + b) / 2).mean((1, 2)),
        "edges": (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean((1, 2, 3))
                 + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean((1, 2, 3)),
    }


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def class_r2(values: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the variance of `values` that the class means explain (one-way ANOVA R²)."""
    n_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=n_classes).clamp_min(1).float()
    means = torch.zeros(n_classes).index_add_(0, labels, values) / counts
    total = ((values - values.mean()) ** 2).sum().clamp_min(1e-12)
    return float(((means[labels] - values.mean()) ** 2).sum() / total)


def describe(name: str, trunk: torch.nn.Module, data: LabelledSet, components: int,
             stats: dict[str, torch.Tensor]) -> list[str]:
    features = frozen_trunk(trunk, "res5")
    train = extract_features(features, data.train.images, device="cpu")
    val = extract_features(features, data.val.images, device="cpu")
    k = min(KNN_K, train.shape[0])
    knn = knn_classify(train, data.train.labels, val, data.val.labels, k=k)["top1"]
    centred = train - train.mean(0)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    share = s**2 / (s**2).sum().clamp_min(1e-12)
    eff_rank = effective_rank(train)
    lines = [f"{name}: kNN{k} {knn:.1f}%, {train.shape[1]} features, effective rank "
             f"{eff_rank:.1f}"]
    head = "  ".join(f"{key:>9}" for key in stats)
    lines.append(f"      var  class R2  {head}   (correlation of the component with)")
    for i in range(min(components, s.numel())):
        score = u[:, i] * s[i]
        corr = "  ".join(f"{correlation(score, v):+9.2f}" for v in stats.values())
        lines.append(f"  PC{i + 1} {share[i]:4.2f}  {class_r2(score, data.train.labels):8.2f}  "
                     f"{corr}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path,
                        help="checkpoint step folders (or their state.pt)")
    parser.add_argument("--data", required=True, help="labelled set (any layout `seer eval` "
                        "reads), e.g. the quality benchmark's <workdir>/labelled")
    parser.add_argument("--size", type=int, default=64, help="image size (default: 64, the "
                        "local preset's eval.image_size)")
    parser.add_argument("--components", type=int, default=4, help="principal components shown")
    args = parser.parse_args(argv)
    if args.components < 1:
        parser.error("--components must be >= 1")
    data = load_labelled(args.data, image_size=args.size)
    stats = image_statistics(data.train.images)
    print(f"labelled set {args.data}: {len(data.train)} train / {len(data.val)} val images, "
          f"{data.num_classes} classes, {args.size} px")
    # One trunk in memory at a time: a RegNetY-256GF checkpoint is ~5 GB.
    for i, path in enumerate(args.checkpoints):
        trunk, cfg = trunk_from_checkpoint(load_state(path))
        if i == 0:
            baseline = random_trunk(cfg.model.trunk)
            print("\n".join(describe(f"random init ({cfg.model.trunk})", baseline, data,
                                     args.components, stats)))
            del baseline
        print("\n".join(describe(str(path), trunk, data, args.components, stats)))
        del trunk
    return 0


if __name__ == "__main__":
    sys.exit(main())
