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

from services.trainer.store_wait import StoreWait, is_store_error

T = TypeVar("T")


class Outcome(enum.IntEnum):
    """One rank's result of an attempt; the group acts on the worst (MAX) of them."""

    OK = 0
    STORE = 1  # the store could not be reached: every rank waits, then all try again
    BAD = 2  # the data itself is unusable (corrupt, missing, wrong shapes): every rank skips it


class Unusable(RuntimeError):
    """The data an attempt read is unusable on this rank or another: raised on every rank."""


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _on(device: torch.device | str) -> torch.device:
    return torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")


def worst(code: int, device: torch.device | str = "cpu") -> int:
    """The MAX of `code` over all ranks (a collective: every rank calls it equally often)."""
    if not distributed():
        return code
    flag = torch.tensor([code], dtype=torch.int64, device=_on(device))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def all_ranks_agree(ok: bool, device: torch.device | str = "cpu") -> bool:
    """True only when `ok` is True on every rank (a collective)."""
    return worst(0 if ok else 1, device) == 0


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


def broadcast_state(state: Any, src: int = 0, device: torch.device | str = "cpu") -> Any:
    """`state` from rank `src` on every rank (a collective; other ranks pass anything).

    The structure and the plain values travel as one pickled object; the tensors are then
    broadcast one by one into buffers of the right shape (no pickling of gigabytes, and on
    NCCL they travel on the device). Tensors arrive on `device` for NCCL, on the CPU for gloo.
    """
    if not distributed():
        return state
    rank = dist.get_rank()
    tensors: list[torch.Tensor] = []

    def strip(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            return _TensorSlot(len(tensors) - 1, tuple(value.shape), value.dtype)
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            items = [strip(item) for item in value]
            return items if isinstance(value, list) else tuple(items)
        return value

    box = [strip(state) if rank == src else None]
    dist.broadcast_object_list(box, src=src)
    skeleton = box[0]
    on = _on(device)
    received: list[torch.Tensor] = []

    def collect(value: Any) -> None:
        if isinstance(value, _TensorSlot):
            if rank == src:
                buffer = tensors[value.index].detach().to(on).contiguous()
            else:
                buffer = torch.empty(value.shape, dtype=value.dtype, device=on)
            dist.broadcast(buffer, src=src)
            received.append(buffer)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)

    collect(skeleton)
    if rank == src:
        return state
    slots = iter(received)

    def fill(value: Any) -> Any:
        if isinstance(value, _TensorSlot):
            return next(slots)
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            items = [fill(item) for item in value]
            return items if isinstance(value, list) else tuple(items)
        return value

    return fill(skeleton)


class _TensorSlot:
    """Where a tensor goes in a broadcast skeleton: its index, shape and dtype."""

    def __init__(self, index: int, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.index, self.shape, self.dtype = index, shape, dtype
