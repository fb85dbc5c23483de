"""SwAV's mathematics: distributed Sinkhorn-Knopp, the multi-crop swapped-prediction loss, the
embedding queue, prototype freezing and collapse signals.

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

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64 (gradcheck, reference maths); everything else runs in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _distributed(group: Any | None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _global_logsumexp(local: Tensor, group: Any | None) -> Tensor:
    """log Σ over all ranks of exp(local): the log-domain twin of SwAV's all-reduced row sums."""
    if not _distributed(group):
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
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [B, K], got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        # Q is K-by-B as in the paper; the original's first global normalisation is a constant
        # shift here, which the first prototype normalisation removes exactly.
        log_q = scores.detach().to(_compute_dtype(scores)).t() / epsilon
        for _ in range(iterations):
            # Prototypes (rows): each gets total mass 1/K over the *global* batch.
            row = _global_logsumexp(torch.logsumexp(log_q, dim=1, keepdim=True), group)
            log_q = log_q - row
            # Samples (columns): each gets mass 1/B; the original's final factor B makes it 1.
            log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True)
        return torch.exp(log_q).t().contiguous()


def _check_loss_args(
    scores: Tensor,
    n_crops: int,
    crops_for_assign: Sequence[int],
    temperature: float,
    epsilon: float,
    sinkhorn_iterations: int,
    queue_scores: Sequence[Tensor] | None,
    global_local_alpha: float | None,
    n_global_crops: int,
) -> None:
    if scores.ndim != 2 or not scores.is_floating_point():
        raise ValueError(
            f"scores must be a 2-D floating tensor [n_crops*B, K], got {tuple(scores.shape)} "
            f"{scores.dtype}"
        )
    if not isinstance(n_crops, int) or n_crops < 2:
        raise ValueError(f"n_crops must be an int >= 2, got {n_crops!r}")
    if scores.shape[0] == 0 or scores.shape[0] % n_crops:
        raise ValueError(
            f"scores has {scores.shape[0]} rows, not a positive multiple of n_crops={n_crops}"
        )
    if len(crops_for_assign) == 0 or len(set(crops_for_assign)) != len(crops_for_assign):
        raise ValueError(f"crops_for_assign must be non-empty and unique, got {crops_for_assign}")
    if any(not isinstance(c, int) or not 0 <= c < n_crops for c in crops_for_assign):
        raise ValueError(f"crops_for_assign must be crop indices < {n_crops}: {crops_for_assign}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if not isinstance(sinkhorn_iterations, int) or sinkhorn_iterations < 1:
        raise ValueError(f"sinkhorn_iterations must be a positive int, got {sinkhorn_iterations!r}")
    if queue_scores is not None:
        if len(queue_scores) != len(crops_for_assign):
            raise ValueError(
                f"queue_scores needs one tensor per assigned crop ({len(crops_for_assign)}), "
                f"got {len(queue_scores)}"
            )
        for q in queue_scores:
            if q.ndim != 2 or q.shape[1] != scores.shape[1]:
                raise ValueError(
                    f"queue_scores entries must be [Q, {scores.shape[1]}], got {tuple(q.shape)}"
                )
    if not isinstance(n_global_crops, int) or not 1 <= n_global_crops <= n_crops:
        raise ValueError(f"n_global_crops must be an int in [1, {n_crops}], got {n_global_crops!r}")
    if global_local_alpha is not None:
        if not 0.0 <= global_local_alpha <= 1.0:
            raise ValueError(f"global_local_alpha must be in [0, 1], got {global_local_alpha}")
        if any(c >= n_global_crops for c in crops_for_assign):
            raise ValueError(
                "global_local_alpha needs every crop in crops_for_assign to be a global crop "
                f"(< n_global_crops={n_global_crops}), got {crops_for_assign}"
            )
        if global_local_alpha > 0 and n_global_crops < 2:
            raise ValueError("global_local_alpha > 0 needs n_global_crops >= 2 (no global pairs)")
        if global_local_alpha < 1 and n_global_crops == n_crops:
            raise ValueError("global_local_alpha < 1 needs local crops (n_global_crops < n_crops)")


def swav_loss_with_codes(
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
) -> tuple[Tensor, list[Tensor]]:
    """:func:`swav_loss` that also returns the codes ``[B, K]`` of each assigned crop.

    The trainer needs the codes for its prototype-usage metric; returning them avoids a second
    Sinkhorn pass.
    """
    crops = tuple(crops_for_assign)
    _check_loss_args(
        scores, n_crops, crops, temperature, epsilon, sinkhorn_iterations, queue_scores,
        global_local_alpha, n_global_crops,
    )
    batch = scores.shape[0] // n_crops
    dtype = _compute_dtype(scores)
    with torch.autocast(device_type=scores.device.type, enabled=False):
        # Log-softmax of every crop once, in float32, shared by all assigned crops.
        log_p = F.log_softmax(scores.to(dtype) / temperature, dim=1).view(n_crops, batch, -1)
        codes: list[Tensor] = []
        pair_losses: list[Tensor] = []
        for i, a in enumerate(crops):
            target = scores[a * batch : (a + 1) * batch].detach().to(dtype)
            if queue_scores is not None:
                target = torch.cat((queue_scores[i].detach().to(target.device, dtype), target))
            q = sinkhorn(target, epsilon, sinkhorn_iterations, group=group)[-batch:].to(dtype)
            codes.append(q)
            # Cross-entropy of q against every crop's prediction: -mean_b Σ_k q log p_v.
            pair_losses.append(-torch.einsum("bk,vbk->v", q, log_p) / batch)
        per_pair = torch.stack(pair_losses)  # [n_assign, n_crops]; column a of row i is unused
        loss = _combine_pairs(per_pair, crops, n_crops, global_local_alpha, n_global_crops)
    return loss, codes


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
    loss, _ = swav_loss_with_codes(
        scores, n_crops, crops_for_assign, temperature, epsilon, sinkhorn_iterations,
        queue_scores, global_local_alpha, n_global_crops, group=group,
    )
    return loss


class SwAVQueue:
    """Per-rank FIFO of past embeddings of the assigned crops, to enlarge Sinkhorn's batch.

    Small per-rank batches make equipartition too strong a constraint; SwAV scores the newest
    ``length`` past embeddings against the *current* prototypes and lets Sinkhorn spread the
    assignment over them too. As in the original, the queue begins filling at ``start_step`` and
    is only used once it has been filled once (a half-empty queue of zeros would distort the
    assignment). Use in a train step::

        queue_scores = queue.scores(prototypes.weight)      # None while not in use
        loss = swav_loss(scores, n_crops, queue_scores=queue_scores)
        queue.push(embeddings, batch_size, step)            # after scoring, newest first

    Each rank holds its own queue, so a checkpoint must hold every rank's ``state_dict``.
    """

    def __init__(
        self,
        length: int,
        dim: int,
        crops_for_assign: Sequence[int] = (0, 1),
        start_step: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be a non-negative int, got {length!r}")
        if length and length // world_size == 0:
            raise ValueError(f"length={length} gives an empty queue on each of {world_size} ranks")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if len(crops_for_assign) == 0 or any(c < 0 for c in crops_for_assign):
            raise ValueError(f"crops_for_assign must be non-empty crop indices: {crops_for_assign}")
        if not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step must be a non-negative int, got {start_step!r}")
        self.length = length // world_size
        self.dim = dim
        self.crops_for_assign = tuple(crops_for_assign)
        self.start_step = start_step
        self.filled = 0
        self.embeddings = torch.zeros(len(self.crops_for_assign), self.length, dim, device=device)

    @property
    def in_use(self) -> bool:
        """True once the queue has been filled completely (it then stays full)."""
        return self.length > 0 and self.filled >= self.length

    @torch.no_grad()
    def scores(self, prototype_weights: Tensor | Sequence[Tensor]) -> list[Tensor] | None:
        """Queue scores ``[length, K]`` per assigned crop with the current prototypes, or None.

        ``prototype_weights`` is ``[K, dim]``, or a sequence of ``[K_i, dim]`` blocks (prototypes
        kept in pieces) which are scored as their concatenation. Computed in float32.
        """
        if not self.in_use:
            return None
        if isinstance(prototype_weights, Tensor):
            weights = prototype_weights
        else:
            weights = torch.cat([w.detach() for w in prototype_weights])
        if weights.ndim != 2 or weights.shape[1] != self.dim:
            raise ValueError(f"prototype_weights must be [K, {self.dim}]: {tuple(weights.shape)}")
        weights = weights.detach().to(device=self.embeddings.device, dtype=torch.float32)
        with torch.autocast(device_type=self.embeddings.device.type, enabled=False):
            return [queue @ weights.t() for queue in self.embeddings]

    @torch.no_grad()
    def push(self, embeddings: Tensor, batch_size: int, step: int) -> None:
        """Shift this step's assigned-crop embeddings in, newest first (no-op before start).

        ``embeddings`` are all crops' embeddings ``[n_crops * batch_size, dim]`` in crop-major
        order, as the model returns them; they are detached and stored in float32.
        """
        if self.length == 0 or step < self.start_step:
            return
        needed = (max(self.crops_for_assign) + 1) * batch_size
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim or embeddings.shape[0] < needed:
            raise ValueError(
                f"embeddings must be [n_crops*{batch_size}, {self.dim}] with at least {needed} "
                f"rows, got {tuple(embeddings.shape)}"
            )
        if self.embeddings.device != embeddings.device:
            self.embeddings = self.embeddings.to(embeddings.device)
        keep = min(batch_size, self.length)
        for i, crop in enumerate(self.crops_for_assign):
            newest = embeddings[crop * batch_size : (crop + 1) * batch_size].detach()
            if keep < self.length:
                self.embeddings[i, keep:] = self.embeddings[i, : self.length - keep].clone()
            self.embeddings[i, :keep] = newest[:keep].to(torch.float32)
        self.filled = min(self.filled + batch_size, self.length)

    def state_dict(self) -> dict[str, Any]:
        return {
            "embeddings": self.embeddings.detach().cpu().clone(),
            "filled": self.filled,
            "crops_for_assign": list(self.crops_for_assign),
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restore a saved queue; ``strict=False`` accepts another length (e.g. a new world size).

        A different length keeps the newest embeddings that fit, so a resized queue keeps
        working immediately when it was full and at least as long as the new one.
        """
        saved: Tensor = state["embeddings"]
        expected = tuple(self.embeddings.shape)
        if tuple(state["crops_for_assign"]) != self.crops_for_assign:
            raise ValueError(
                f"queue state is for crops {state['crops_for_assign']}, expected "
                f"{list(self.crops_for_assign)}"
            )
        resizable = not strict and saved.ndim == 3 and saved.shape[::2] == expected[::2]
        if tuple(saved.shape) != expected and not resizable:
            raise ValueError(f"queue state has shape {tuple(saved.shape)}, expected {expected}")
        rows = min(saved.shape[1], self.length)
        self.embeddings.zero_()
        self.embeddings[:, :rows] = saved[:, :rows].to(self.embeddings.device, torch.float32)
        self.filled = min(int(state["filled"]), rows)


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
