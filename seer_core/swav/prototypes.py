"""Prototype freezing and the collapse signals (usage entropy, loss near ln K)."""

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
