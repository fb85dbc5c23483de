"""Prototype freezing and the collapse signals (usage entropy, loss near ln K, effective rank)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn


def cancel_prototype_gradients(
    params: Iterable[nn.Parameter], step: int, freeze_steps: int
) -> bool:
    """Drop the prototypes' gradients (after backward) during the first ``freeze_steps`` steps.

    SwAV freezes the prototypes at the start because random early codes would drag them into a
    poor configuration. Dropping the gradient (rather than toggling ``requires_grad``) keeps
    DDP's bucket layout fixed, and the optimizer skips parameters without a gradient, so neither
    momentum nor weight decay moves them. Returns whether the gradients were dropped.
    """
    if step >= freeze_steps:
        return False
    for p in params:
        p.grad = None
    return True


@torch.no_grad()
def prototype_usage_entropy(codes: Tensor) -> float:
    """Entropy of the mean code distribution over prototypes, divided by ln K (in [0, 1]).

    1 means the batch uses all prototypes evenly; near 0 means everything lands on a few
    prototypes, the usual face of collapse.
    """
    if codes.ndim != 2 or codes.shape[1] < 2:
        raise ValueError(f"codes must be [B, K] with K >= 2, got {tuple(codes.shape)}")
    mean = codes.detach().to(torch.float64).mean(dim=0).clamp_min(0)
    total = mean.sum()
    if not total > 0:
        return 0.0
    p = mean / total
    entropy = -torch.special.xlogy(p, p).sum()
    return float(entropy / math.log(codes.shape[1]))


def collapse_suspected(loss: float, n_prototypes: int, tol: float = 0.02) -> bool:
    """True when the loss is no better than chance: within ``tol`` (relative) of ln K or above.

    Cross-entropy against equipartitioned codes is at least ln K when the predictions carry no
    information (Gibbs' inequality), which is where a collapsed model sits. Only meaningful after
    the first steps: a freshly initialised model also starts at about ln K.
    """
    if n_prototypes < 2:
        raise ValueError(f"n_prototypes must be >= 2, got {n_prototypes}")
    if not math.isfinite(loss):
        return False
    return loss >= (1.0 - tol) * math.log(n_prototypes)


@torch.no_grad()
def effective_rank(x: Tensor) -> float:
    """exp(entropy of the variance shares of the principal components of the rows of ``x``).

    The collapse that usage entropy cannot see: Sinkhorn spreads a batch evenly over the
    prototypes even when every embedding varies along one or two directions (dimensional
    collapse), and SwAV's loss keeps *falling* while that happens, because one cue that survives
    every distortion (a texture, the contrast) matches views well. The effective rank counts the
    directions the batch really varies in: ``d`` for variance spread evenly over ``d``
    components, 1 for a batch on a line, at most ``min(N - 1, D)`` (RankMe, Garrido et al. 2023,
    on the same idea). One rank's batch is a few hundred rows at most: the SVD runs on the host
    in float64 (microseconds to a millisecond), not as a small, sync-bound solver call on the GPU.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be [N, D] with N >= 2, got {tuple(x.shape)}")
    centred = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(centred).all():  # a step about to be skipped: nothing to measure
        return math.nan
    centred = centred - centred.mean(dim=0)
    variance = torch.linalg.svdvals(centred) ** 2
    total = variance.sum()
    if not total > 0:
        return 0.0
    share = variance / total
    return float(torch.exp(-torch.special.xlogy(share, share).sum()))
