"""Distributed Sinkhorn-Knopp, in the log domain.

Numerics. Sinkhorn works on ``exp(scores / epsilon)``; with epsilon = 0.05 and cosine scores that
is up to e^20, and with epsilon = 0.01 up to e^100, far past float16 and, for unnormalised scores,
past float32 too. This implementation therefore runs the *same* iteration as the original SwAV
``distributed_sinkhorn`` but on ``log Q``: every normalisation becomes a subtraction of a
log-sum-exp (which subtracts its maximum before exponentiating, the maximum being all-reduced
across ranks for the prototype sums). The multiplicative constants of the original (the global
sum, 1/K, 1/B and the final factor B) cancel exactly between consecutive normalisations, so the
codes are the original's codes, without overflow and without whole columns underflowing to 0/0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from seer_core.distributed import rank_and_world


def compute_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64 (gradcheck, reference maths); everything else runs in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _global_logsumexp(local: Tensor, group: Any | None) -> Tensor:
    """log Σ over all ranks of exp(local): the log-domain twin of SwAV's all-reduced row sums."""
    if rank_and_world(group)[1] <= 1:  # -1: not in `group`
        return local
    peak = local.clone()
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.exp(local - peak)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return peak + torch.log(total)


@torch.no_grad()
def sinkhorn(
    scores: Tensor, epsilon: float = 0.05, iterations: int = 3, *, group: Any | None = None
) -> Tensor:
    """Equipartitioned soft assignments (codes) of samples to prototypes.

    ``scores`` is ``[B, K]`` (this rank's rows); the result is ``[B, K]`` with rows summing to 1
    and, over the global batch of all ranks, each prototype receiving about ``B_global / K``.
    With ``torch.distributed`` initialised and more than one process in ``group``, W processes
    with B rows each give the codes one process would give on all W·B rows (ranks may even hold
    different numbers of rows). Runs in float32 (float64 for float64 input) under ``no_grad``:
    codes are targets, and SwAV stops the gradient through them.
    """
    if scores.ndim != 2 or not scores.is_floating_point():
        raise ValueError(f"scores must be a 2-D floating tensor [B, K], got "
                         f"{tuple(scores.shape)} {scores.dtype}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        # Q is K-by-B as in the paper; the original's first global normalisation is a constant
        # shift here, which the first prototype normalisation removes exactly.
        log_q = scores.detach().to(compute_dtype(scores)).t() / epsilon
        for _ in range(iterations):
            # Prototypes (rows): each gets total mass 1/K over the *global* batch.
            row = _global_logsumexp(torch.logsumexp(log_q, dim=1, keepdim=True), group)
            log_q = log_q - row
            # Samples (columns): each gets mass 1/B; the original's final factor B makes it 1.
            log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True)
        return torch.exp(log_q).t().contiguous()
