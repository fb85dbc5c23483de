"""SwAV's swapped-prediction multi-crop loss, and SSLight's global/local rebalancing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seer_core.swav.sinkhorn import compute_dtype, sinkhorn


def _check_loss_args(
    scores: Tensor,
    n_crops: int,
    crops_for_assign: Sequence[int],
    temperature: float,
    sinkhorn_iterations: int,
    queue_scores: Sequence[Tensor] | None,
    global_local_alpha: float | None,
    n_global_crops: int,
) -> None:
    """Names the bad argument; `epsilon` is left to `sinkhorn`, which checks it in the same
    words."""
    if scores.ndim != 2 or not scores.is_floating_point():
        raise ValueError(f"scores must be a 2-D floating tensor [n_crops*B, K], got "
                         f"{tuple(scores.shape)} {scores.dtype}")
    if not isinstance(n_crops, int) or n_crops < 2:
        raise ValueError(f"n_crops must be an int >= 2, got {n_crops!r}")
    if scores.shape[0] == 0 or scores.shape[0] % n_crops:
        raise ValueError(f"scores has {scores.shape[0]} rows, not a positive multiple of "
                         f"n_crops={n_crops}")
    if len(crops_for_assign) == 0 or len(set(crops_for_assign)) != len(crops_for_assign):
        raise ValueError(f"crops_for_assign must be non-empty and unique, got {crops_for_assign}")
    if any(not isinstance(c, int) or not 0 <= c < n_crops for c in crops_for_assign):
        raise ValueError(f"crops_for_assign must be crop indices < {n_crops}: {crops_for_assign}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not isinstance(sinkhorn_iterations, int) or sinkhorn_iterations < 1:
        raise ValueError(f"sinkhorn_iterations must be a positive int, got {sinkhorn_iterations!r}")
    if queue_scores is not None and len(queue_scores) != len(crops_for_assign):
        raise ValueError(f"queue_scores needs one tensor per assigned crop "
                         f"({len(crops_for_assign)}), got {len(queue_scores)}")
    for q in queue_scores or ():
        if q.ndim != 2 or q.shape[1] != scores.shape[1]:
            raise ValueError(f"queue_scores entries must be [Q, {scores.shape[1]}], got "
                             f"{tuple(q.shape)}")
    if not isinstance(n_global_crops, int) or not 1 <= n_global_crops <= n_crops:
        raise ValueError(f"n_global_crops must be an int in [1, {n_crops}], got {n_global_crops!r}")
    if global_local_alpha is None:
        return
    if not 0.0 <= global_local_alpha <= 1.0:
        raise ValueError(f"global_local_alpha must be in [0, 1], got {global_local_alpha}")
    if any(c >= n_global_crops for c in crops_for_assign):
        raise ValueError("global_local_alpha needs every crop in crops_for_assign to be a global "
                         f"crop (< n_global_crops={n_global_crops}), got {crops_for_assign}")
    if global_local_alpha > 0 and n_global_crops < 2:
        raise ValueError("global_local_alpha > 0 needs n_global_crops >= 2 (no global pairs)")
    if global_local_alpha < 1 and n_global_crops == n_crops:
        raise ValueError("global_local_alpha < 1 needs local crops (n_global_crops < n_crops)")


def _combine_pairs(
    per_pair: Tensor,
    crops: tuple[int, ...],
    n_crops: int,
    alpha: float | None,
    n_global_crops: int,
) -> Tensor:
    """Average the (assigned crop, other crop) cross-entropies the way the chosen loss asks."""
    mask = torch.ones_like(per_pair, dtype=torch.bool)
    for i, a in enumerate(crops):
        mask[i, a] = False
    if alpha is None:
        # SwAV: mean over the other crops, then over the assigned crops; every assigned crop has
        # n_crops - 1 partners, so this is the mean over all pairs.
        return per_pair[mask].sum() / (len(crops) * (n_crops - 1))
    is_global = torch.arange(n_crops, device=per_pair.device) < n_global_crops
    gg = mask & is_global.unsqueeze(0)
    gl = mask & ~is_global.unsqueeze(0)
    loss = per_pair.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * per_pair[gg].mean()
    if alpha < 1:
        loss = loss + (1.0 - alpha) * per_pair[gl].mean()
    return loss


def swav_loss(
    scores: Tensor,
    n_crops: int,
    crops_for_assign: Sequence[int] = (0, 1),
    temperature: float = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
    queue_scores: Sequence[Tensor] | None = None,
    global_local_alpha: float | None = None,
    n_global_crops: int = 2,
    *,
    group: Any | None = None,
) -> Tensor:
    """SwAV's swapped-prediction multi-crop loss (scalar, differentiable w.r.t. ``scores``).

    ``scores`` are prototype scores ``[n_crops * B, K]`` in crop-major order. Each assigned crop
    gets codes from Sinkhorn (over the global batch, with that crop's queue scores prepended when
    given) and every *other* crop must predict them: cross-entropy against
    ``log_softmax(scores / temperature)``. Without ``global_local_alpha`` this is the original
    SwAV loss; with it, SSLight's rebalanced loss ``alpha * mean(global-global pairs) +
    (1 - alpha) * mean(global-local pairs)``, which lets small networks weigh the two kinds of
    views separately (``alpha = P_gg / (P_gg + P_gl)`` is the original again).
    """
    crops = tuple(crops_for_assign)
    _check_loss_args(
        scores, n_crops, crops, temperature, sinkhorn_iterations, queue_scores,
        global_local_alpha, n_global_crops,
    )
    batch = scores.shape[0] // n_crops
    dtype = compute_dtype(scores)
    with torch.autocast(device_type=scores.device.type, enabled=False):
        # Log-softmax of every crop once, in float32, shared by all assigned crops.
        log_p = F.log_softmax(scores.to(dtype) / temperature, dim=1).view(n_crops, batch, -1)
        pair_losses: list[Tensor] = []
        for i, a in enumerate(crops):
            target = scores[a * batch : (a + 1) * batch].detach().to(dtype)
            if queue_scores is not None:
                target = torch.cat((queue_scores[i].detach().to(target.device, dtype), target))
            q = sinkhorn(target, epsilon, sinkhorn_iterations, group=group)[-batch:].to(dtype)
            # Cross-entropy of q against every crop's prediction: -mean_b Σ_k q log p_v.
            pair_losses.append(-torch.einsum("bk,vbk->v", q, log_p) / batch)
        per_pair = torch.stack(pair_losses)  # [n_assign, n_crops]; column a of row i is unused
        return _combine_pairs(per_pair, crops, n_crops, global_local_alpha, n_global_crops)
