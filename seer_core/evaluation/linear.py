"""Linear probe on frozen features, with its hyper-parameters chosen on held-out TRAIN data.

The linear probe is the headline SSL metric, and its most common flaw is choosing the learning
rate or weight decay by test accuracy, which inflates the number. Here the (lr, wd) grid is
scored on a class-stratified, seeded held-out part of the training split; the test split is
touched once, by the retrained winner.

All grid points train at once, their G weight matrices side by side in one ``[D, G*C]``
matrix, with a hand-written softmax-regression gradient and SGD with momentum: on small feature
sets a step costs mostly fixed overhead, so nine grid points cost little more than one.
Weights start at zero (the problem is convex; no initialisation randomness), and the features
are standardised with the statistics of the part trained on and scaled by ``1/sqrt(D)``, so
that one default lr grid suits a 64-wide ``tiny`` trunk and a 10444-wide RegNetY-256GF alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from seer_core.evaluation.checks import EvalError, check_pair, topk_correct

DEFAULT_LRS: tuple[float, ...] = (0.1, 1.0, 10.0)
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (0.0, 1e-3, 1e-2)
MOMENTUM = 0.9
# Grid points trained together are chunked so that weights, momentum and gradient stay below
# about 3 x 4 bytes x this many (with C = 1000 and D = 10444: three grid points per chunk).
_MAX_BATCHED_WEIGHTS = 32_000_000


@dataclass
class ProbeResult:
    """Test accuracy (%) of the retrained probe and the (lr, wd) the held-out sweep chose.

    ``holdout_top1`` is the chosen point's accuracy (%) on the held-out part of the train split;
    NaN when no part could be held out (no class with 2 or more images, or holdout_fraction 0).
    """

    top1: float
    top5: float
    lr: float
    weight_decay: float
    holdout_top1: float


def per_class_draw(labels: torch.Tensor, seed: int, count: Callable[[int], int]) -> torch.Tensor:
    """Sorted indices of ``count(n_c)`` members of each class c (n_c members), drawn without
    replacement from a CPU generator seeded with `seed`, classes in sorted order (a class with
    a count of 0 draws nothing): the same labels and seed give the same subset anywhere."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    picked = [torch.zeros(0, dtype=torch.long)]
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        take = count(members.numel())
        if take > 0:
            picked.append(members[torch.randperm(members.numel(), generator=generator)[:take]])
    return torch.sort(torch.cat(picked)).values


def stratified_holdout(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) sorted indices: per class with n_c >= 2, ``max(1, round(fraction * n_c))``
    images held out but at least one kept; classes with one image are all kept.

    Stratified so the held-out accuracy weighs classes as the test split does, and seeded so the
    same train split always gives the same choice of hyper-parameters.
    """
    held = per_class_draw(
        labels, seed, lambda n: min(n - 1, max(1, round(fraction * n))) if fraction > 0 else 0
    )
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[held] = False
    return mask.nonzero().flatten(), held


def _standardiser(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale): ``(x - mean) * scale`` is zero-mean, unit-variance per dimension, / sqrt(D).

    Constant dimensions get scale 0 rather than an infinite one.
    """
    x = features.float()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    scale = torch.where(std > 1e-12, 1.0 / std.clamp_min(1e-12), torch.zeros_like(std))
    return mean, scale / math.sqrt(x.shape[1])


def _train(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    grid: Sequence[tuple[float, float]],
    epochs: int,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[G,D,C]`` and biases ``[G,C]`` of one softmax regression per (lr, wd) in `grid`.

    SGD with momentum (PyTorch's form), L2 weight decay on the weights only, cosine LR from lr
    to 0 over all steps, mini-batches in a seeded order shared by every grid point. The G
    models are stored side by side as one ``[D, G*C]`` matrix so each step is two plain GEMMs.
    """
    n, d = x.shape
    device = x.device
    g, c = len(grid), num_classes
    lr0 = torch.tensor([lr for lr, _ in grid], device=device).repeat_interleave(c)
    wd = torch.tensor([w for _, w in grid], device=device).repeat_interleave(c)
    weight = torch.zeros(d, g * c, device=device)
    bias = torch.zeros(g * c, device=device)
    buf_w, buf_b = torch.zeros_like(weight), torch.zeros_like(bias)
    onehot = torch.nn.functional.one_hot(y, c).float()
    batch_size = min(batch_size, n)
    total = epochs * math.ceil(n / batch_size)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            xb = x.index_select(0, rows)
            logits = torch.addmm(bias, xb, weight).view(-1, g, c)
            # Softmax by hand: ATen's CPU softmax over a last dim of C ~ 10 is 5x slower.
            probs = logits.sub_(logits.amax(dim=2, keepdim=True)).exp_()
            probs.div_(probs.sum(dim=2, keepdim=True))
            # d(mean CE)/d(logits), for every grid point at once.
            target = onehot.index_select(0, rows).unsqueeze(1)
            err = probs.sub_(target).div_(rows.numel()).view(-1, g * c)
            grad_w = torch.addmm(weight * wd, xb.T, err)
            buf_w.mul_(MOMENTUM).add_(grad_w)
            buf_b.mul_(MOMENTUM).add_(err.sum(dim=0))
            lr = lr0 * (0.5 * (1.0 + math.cos(math.pi * step / total)))
            weight.sub_(buf_w * lr)
            bias.sub_(buf_b * lr)
            step += 1
    return weight.view(d, g, c).permute(1, 0, 2), bias.view(g, c)


def _fit_and_score(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eval_x: torch.Tensor,
    num_classes: int,
    grid: Sequence[tuple[float, float]],
    epochs: int,
    batch_size: int,
    seed: int,
) -> list[torch.Tensor]:
    """Standardise with `train_x` statistics, train every grid point, return each point's class
    scores ``[M,C]`` on `eval_x` (non-finite scores, from a diverged point, set to -inf)."""
    mean, scale = _standardiser(train_x)
    xt = (train_x.float() - mean) * scale
    xe = (eval_x.float() - mean) * scale
    chunk = max(1, _MAX_BATCHED_WEIGHTS // (xt.shape[1] * num_classes))
    scores: list[torch.Tensor] = []
    for first in range(0, len(grid), chunk):
        part = grid[first : first + chunk]
        weight, bias = _train(xt, train_y, num_classes, part, epochs, batch_size, seed)
        out = torch.einsum("md,gdc->gmc", xe, weight) + bias[:, None, :]
        out = torch.nan_to_num(out, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)
        scores.extend(out.unbind(0))
    return scores


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int | None = None,
    lrs: Sequence[float] = DEFAULT_LRS,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    holdout_fraction: float = 0.2,
    epochs: int = 100,
    batch_size: int = 256,
    seed: int = 0,
) -> ProbeResult:
    """Train a linear classifier on frozen features; return its test accuracy (%).

    The (lr, wd) grid is scored on a stratified `holdout_fraction` of the train split (seeded by
    `seed`); the best point (the first in lr-major grid order on ties) is retrained on the whole
    train split and evaluated once on the test split. With nothing to hold out, the first grid
    point is used. Runs on the features' device; deterministic given `seed` there.

    lr and wd act on the standardised features scaled by ``1/sqrt(D)`` (see the module
    docstring); on plainly standardised features they would read as ``lr / D`` and ``wd / D``.
    """
    n_classes = check_pair(train_features, train_labels, test_features, test_labels, num_classes)
    if not lrs or not weight_decays:
        raise EvalError("linear probe: lrs and weight_decays must each hold at least one value")
    if any(not lr > 0 for lr in lrs) or any(not wd >= 0 for wd in weight_decays):
        raise EvalError(f"linear probe: lrs must be > 0 and weight decays >= 0, got "
                        f"{list(lrs)} and {list(weight_decays)}")
    if not 0 <= holdout_fraction < 1:
        raise EvalError(f"linear probe: holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if epochs < 1 or batch_size < 1:
        raise EvalError(f"linear probe: epochs ({epochs}) and batch_size ({batch_size}) must "
                        "be >= 1")
    grid = [(float(lr), float(wd)) for lr in lrs for wd in weight_decays]
    device = train_features.device
    train_y = train_labels.to(device=device, dtype=torch.long)

    kept, held = stratified_holdout(train_y, holdout_fraction, seed)
    chosen, holdout_top1 = grid[0], math.nan
    if held.numel() > 0:
        kept, held = kept.to(device), held.to(device)
        scores = _fit_and_score(
            train_features[kept], train_y[kept], train_features[held], n_classes, grid,
            epochs, batch_size, seed,
        )
        hits = [topk_correct(s, train_y[held], 1)[0] for s in scores]
        best = max(range(len(grid)), key=lambda i: (hits[i], -i))
        chosen, holdout_top1 = grid[best], 100.0 * hits[best] / held.numel()

    (test_scores,) = _fit_and_score(
        train_features, train_y, test_features.to(device), n_classes, [chosen], epochs,
        batch_size, seed,
    )
    top1, top5 = topk_correct(test_scores, test_labels.to(device), 5)
    n_test = test_labels.numel()
    return ProbeResult(
        top1=100.0 * top1 / n_test,
        top5=100.0 * top5 / n_test,
        lr=chosen[0],
        weight_decay=chosen[1],
        holdout_top1=holdout_top1,
    )
