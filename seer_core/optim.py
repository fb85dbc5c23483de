"""LARS (layer-wise adaptive rate scaling) as SwAV/SEER use it, and its parameter groups.

SwAV trains with SGD wrapped in apex's LARC: each tensor's gradient is rescaled by a trust ratio
``eta * |w| / (|g| + wd * |w| + eps)`` so that every layer moves by about the same relative amount,
which is what lets SEER train with very large batches. Weight decay sits *inside* the trust ratio
(it is added to the gradient before the rescale), exactly as LARC does, rather than being applied
by the inner SGD. Biases and normalisation weights are usually kept out of both the adaptation and
the decay: their norms are tiny or meaningless, and decaying them only hurts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from seer_core.bounds import Momentum, NonNegative, Positive, check


class LARS(torch.optim.Optimizer):
    """SGD with momentum and LARC-style layer-wise trust ratios.

    Per parameter ``w`` with gradient ``g`` in a group that is not ``lars_exclude``::

        local_lr = eta * |w| / (|g| + wd * |w| + eps)      # only when |w| > 0 and |g| > 0
        local_lr = min(local_lr / lr, 1)                    # only with clip=True
        g <- (g + wd * w) * local_lr                        # only when |w| > 0 and |g| > 0
        buf <- momentum * buf + g ;  w <- w - lr * buf

    In an excluded group ``g`` is used as it is (no trust ratio, no weight decay). The norm test
    is done on the device with ``torch.where`` so a step never waits for the GPU.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        eps: float = 1e-8,
        clip: bool = False,
        lars_exclude: bool = False,
    ) -> None:
        check("lr", lr, NonNegative)
        check("momentum", momentum, Momentum)
        check("weight_decay", weight_decay, NonNegative)
        check("eta", eta, Positive)
        check("eps", eps, NonNegative)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      eps=eps, clip=clip, lars_exclude=lars_exclude))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = float(group["lr"])
            momentum = float(group["momentum"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                grad = p.grad
                if not group["lars_exclude"]:
                    grad = self._adapt(p, grad, group, lr)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = torch.clone(grad).detach()
                    state["momentum_buffer"] = buf
                else:
                    buf.mul_(momentum).add_(grad)
                p.add_(buf, alpha=-lr)
        return loss

    @staticmethod
    def _adapt(p: Tensor, grad: Tensor, group: dict[str, Any], lr: float) -> Tensor:
        """Return the trust-ratio-scaled gradient with weight decay folded in (LARC's rule)."""
        wd = float(group["weight_decay"])
        # Norms of half-precision tensors overflow easily: take them in float32 at least.
        dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        w_norm = torch.linalg.vector_norm(p, dtype=dtype)
        g_norm = torch.linalg.vector_norm(grad, dtype=dtype)
        local_lr = group["eta"] * w_norm / (g_norm + wd * w_norm + group["eps"])
        if group["clip"] and lr > 0:
            local_lr = torch.clamp(local_lr / lr, max=1.0)
        active = (w_norm > 0) & (g_norm > 0)
        # LARC leaves the gradient untouched (and skips weight decay) when either norm is zero.
        scale = torch.where(active, local_lr, torch.ones_like(local_lr)).to(grad.dtype)
        decay = torch.where(active, wd, 0.0).to(grad.dtype)
        return (grad + decay * p) * scale


def param_groups(
    model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True
) -> list[dict[str, Any]]:
    """Split trainable parameters into a LARS group and an excluded group.

    One-dimensional tensors are the biases and the normalisation scales/shifts; those are the
    ones whose trust ratio is meaningless, so with ``exclude_bias_and_norm`` they get plain
    momentum SGD without weight decay. Empty groups are left out.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    excluded = [p for p in trainable if exclude_bias_and_norm and p.ndim <= 1]
    adapted = [p for p in trainable if not (exclude_bias_and_norm and p.ndim <= 1)]
    groups = [
        {"params": adapted, "weight_decay": weight_decay, "lars_exclude": False, "name": "lars"},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True, "name": "excluded"},
    ]
    return [g for g in groups if g["params"]]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every group the schedule's LR (schedules are global; groups differ only in decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


#: Group keys that are progress, not knobs: the LR is set by the schedule after every load.
_NOT_HYPERPARAMETERS = frozenset({"params", "lr", "initial_lr"})


def load_state_keeping_hyperparameters(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any]
) -> list[tuple[str, Any, Any]]:
    """Load a saved optimizer state (momentum buffers), but keep the groups' hyperparameters.

    ``Optimizer.load_state_dict`` replaces every param group by the saved one, so a run resumed
    with a new weight decay, momentum, LARS eta, eps or clip would silently keep the old values.
    The optimizer is built from the config; its hyperparameters are put back after the load
    (keys a newer version added are thus present too). Returns ``(key, saved, now)`` for every
    value that differs, once per distinct change (one entry when every group changed alike).
    """
    wanted = [
        {k: v for k, v in group.items() if k not in _NOT_HYPERPARAMETERS}
        for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(saved)
    changes: list[tuple[str, Any, Any]] = []
    missing = object()
    for group, values in zip(optimizer.param_groups, wanted):
        for key, value in values.items():
            old = group.get(key, missing)
            if old is not missing and old != value and (key, old, value) not in changes:
                changes.append((key, old, value))
            group[key] = value
    return changes
