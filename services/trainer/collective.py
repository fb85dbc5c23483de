"""Decisions every rank takes together, and state sent from one rank to all.

The cluster rule (DESIGN §5): what one rank finds is decided for all ranks, because a rank that
goes its own way leaves the others waiting in a collective until `train.collective_timeout_s`.
So a store error on one rank makes *every* rank wait and retry (`agree_with_retry`), a corrupt
file on one rank makes every rank skip that checkpoint, and nobody waits for the store while
the others sit in an all-reduce.

`broadcast_state` sends a nested state (dicts, lists, tensors, plain values) from one rank to
all: the shared part of a checkpoint is read from the store once and broadcast, instead of
every rank downloading the same gigabytes (SEER's RegNetY-256GF with LARS momentum is ~12 GB:
64 ranks reading it would be ~750 GB per restart).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from seer_core.distributed import rank_and_world
from services.trainer.store_wait import StoreWait, is_store_error

T = TypeVar("T")


class Outcome(enum.IntEnum):
    """One rank's result of an attempt; the group acts on the worst (MAX) of them."""

    OK = 0
    STORE = 1  # the store could not be reached: every rank waits, then all try again
    BAD = 2  # the data itself is unusable (corrupt, missing, wrong shapes): every rank skips it


class Unusable(RuntimeError):
    """The data an attempt read is unusable on this rank or another: raised on every rank."""


def _on(device: torch.device | str) -> torch.device:
    return torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")


def worst(code: int, device: torch.device | str = "cpu") -> int:
    """The MAX of `code` over all ranks (a collective: every rank calls it equally often)."""
    if rank_and_world()[1] <= 1:
        return code
    flag = torch.tensor([code], dtype=torch.int64, device=_on(device))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def agree_with_retry(attempt: Callable[[], T], wait: StoreWait,
                     device: torch.device | str = "cpu",
                     is_bad: Callable[[BaseException], bool] = lambda _exc: True) -> T:
    """Runs `attempt` on every rank until every rank succeeds; a collective.

    - a store error on any rank: every rank waits the same backoff, then all try again (past
      the grace, `StoreUnavailable` on every rank);
    - an exception for which `is_bad` is true, on any rank: every rank raises `Unusable`
      (chained to its own error, if it had one), so that all move on together;
    - any other exception propagates on its rank (a bug: the group restarts).
    """
    while True:
        error: BaseException | None = None
        result: T | None = None
        code = Outcome.OK
        try:
            result = attempt()
        except Exception as exc:
            if is_store_error(exc):
                code, error = Outcome.STORE, exc
            elif is_bad(exc):
                code, error = Outcome.BAD, exc
            else:
                raise
        group = worst(int(code), device)
        if group == Outcome.OK:
            wait.succeeded()
            return result  # type: ignore[return-value]
        if group == Outcome.BAD:
            if error is not None and code == Outcome.BAD:
                raise Unusable(f"{wait.what}: {error}") from error
            raise Unusable(f"{wait.what}: unusable on another rank")
        wait.failed(error if error is not None else OSError("store error on another rank"))


def map_leaves(value: Any, kind: type, fn: Callable[[Any], Any]) -> Any:
    """`value` with every leaf of type `kind` replaced by `fn(leaf)`, through dicts, lists and
    tuples (in their order: two walks of the same structure meet the leaves in the same order)."""
    if isinstance(value, kind):
        return fn(value)
    if isinstance(value, dict):
        return {key: map_leaves(item, kind, fn) for key, item in value.items()}
    if isinstance(value, list):
        return [map_leaves(item, kind, fn) for item in value]
    if isinstance(value, tuple):
        return tuple(map_leaves(item, kind, fn) for item in value)
    return value


def broadcast_state(state: Any, src: int = 0, device: torch.device | str = "cpu") -> Any:
    """`state` from rank `src` on every rank (a collective; other ranks pass anything).

    The structure and the plain values travel as one pickled object; the tensors are then
    broadcast one by one into buffers of the right shape (no pickling of gigabytes, and on
    NCCL they travel on the device). Tensors arrive on `device` for NCCL, on the CPU for gloo.
    """
    rank, world = rank_and_world()
    if world <= 1:
        return state
    tensors: list[torch.Tensor] = []

    def slot(tensor: torch.Tensor) -> _TensorSlot:
        tensors.append(tensor)
        return _TensorSlot(len(tensors) - 1, tuple(tensor.shape), tensor.dtype)

    box = [map_leaves(state, torch.Tensor, slot) if rank == src else None]
    dist.broadcast_object_list(box, src=src)
    on = _on(device)

    def receive(where: _TensorSlot) -> torch.Tensor | None:
        if rank == src:
            buffer = tensors[where.index].detach().to(on).contiguous()
        else:
            buffer = torch.empty(where.shape, dtype=where.dtype, device=on)
        dist.broadcast(buffer, src=src)
        return None if rank == src else buffer  # the sender keeps no second copy

    received = map_leaves(box[0], _TensorSlot, receive)
    return state if rank == src else received


class _TensorSlot:
    """Where a tensor goes in a broadcast skeleton: its index, shape and dtype."""

    def __init__(self, index: int, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.index, self.shape, self.dtype = index, shape, dtype
