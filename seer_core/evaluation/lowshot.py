"""Low-shot linear probes: the probe on 1% / 10% of the labels, class-balanced, over seeds.

SEER's claim is label efficiency, which only shows when labels are scarce; and with a handful of
images per class the result depends on which images were drawn, so each fraction is repeated
over several seeded draws and reported as mean and spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from seer_core.evaluation.checks import EvalError, check_pair
from seer_core.evaluation.linear import (
    DEFAULT_LRS,
    DEFAULT_WEIGHT_DECAYS,
    linear_probe,
    per_class_draw,
)


@dataclass
class LowShotResult:
    """Test accuracy (%) of the probe on one label fraction: mean and population std over seeds
    (std 0 for a single seed), and each seed's top-1."""

    fraction: float
    top1_mean: float
    top1_std: float
    top5_mean: float
    top5_std: float
    per_seed_top1: list[float]


def lowshot_indices(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of a class-balanced subset: for each class c with n_c images, exactly
    ``max(1, round(fraction * n_c))`` of them (Python's round), drawn without replacement.

    Balanced per class (not a uniform draw over all images) so that no class vanishes from a 1%
    subset. Seeded on the CPU: the same labels, fraction and seed give the same subset anywhere.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.numel() == 0:
        raise EvalError("lowshot: labels must be a non-empty [N] tensor")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise EvalError(f"lowshot: labels must be integers, got {labels.dtype}")
    if not 0 < fraction <= 1:
        raise EvalError(f"lowshot: fraction must be in (0, 1], got {fraction}")
    return per_class_draw(labels, seed, lambda n: max(1, round(fraction * n)))


def lowshot(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    fractions: Sequence[float] = (0.01, 0.1),
    seeds: Sequence[int] = (0, 1, 2),
    num_classes: int | None = None,
    **probe_kwargs: Any,
) -> list[LowShotResult]:
    """One result per fraction: ``linear_probe`` on each seed's class-balanced subset of the
    train split, evaluated on the whole test split.

    The probe's (lr, wd) sweep is held out inside the subset when every class has >= 2 images
    there; otherwise the first grid point is used without a sweep (one image per class cannot
    be split). `probe_kwargs` go to ``linear_probe`` (lrs, weight_decays, epochs, ...); its seed
    is the subset's seed.
    """
    n_classes = check_pair(train_features, train_labels, test_features, test_labels, num_classes)
    if "seed" in probe_kwargs:
        raise EvalError("lowshot: pass `seeds`, not `seed` (each subset's probe uses its seed)")
    if not fractions or not seeds:
        raise EvalError("lowshot: fractions and seeds must each hold at least one value")
    lrs = tuple(probe_kwargs.pop("lrs", DEFAULT_LRS))
    wds = tuple(probe_kwargs.pop("weight_decays", DEFAULT_WEIGHT_DECAYS))
    results = []
    for fraction in fractions:
        top1s, top5s = [], []
        for seed in seeds:
            idx = lowshot_indices(train_labels, fraction, seed)
            sub_y = train_labels.cpu()[idx]
            sweep = int(torch.bincount(sub_y)[torch.unique(sub_y)].min()) >= 2
            kwargs = dict(probe_kwargs)
            if not sweep:
                kwargs["holdout_fraction"] = 0.0
            probe = linear_probe(
                train_features[idx.to(train_features.device)],
                sub_y,
                test_features,
                test_labels,
                num_classes=n_classes,
                lrs=lrs if sweep else lrs[:1],
                weight_decays=wds if sweep else wds[:1],
                seed=seed,
                **kwargs,
            )
            top1s.append(probe.top1)
            top5s.append(probe.top5)
        results.append(LowShotResult(  # pstdev of one value is 0.0
            float(fraction), statistics.fmean(top1s), statistics.pstdev(top1s),
            statistics.fmean(top5s), statistics.pstdev(top5s), top1s))
    return results
