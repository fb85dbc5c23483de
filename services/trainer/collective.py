"""Waiting out an unreachable checkpoint store, and what every rank does together.

A throttling or down store is a transient condition of a weeks-long run: the run waits (log
lines, the `seer_train_store_wait_seconds` gauge) and goes on; only past
`checkpoint.store_grace_minutes` does `StoreUnavailable` end it (a restart would only wait
again). A store error is an `OSError` (pyarrow's S3 and network errors) other than
`FileNotFoundError`, which is an answer about the data, like a file that does not unpickle.

What one rank finds is decided for all (DESIGN §5): a rank that goes its own way leaves the others
in a collective until `train.collective_timeout_s`. So a store error on one rank makes every rank
wait and retry, a corrupt file on one rank makes every rank skip that checkpoint, and the backoff
draws come from a generator seeded alike on every rank, so all sleep alike without a message.
`broadcast_state` reads the shared part of a checkpoint once and broadcasts it (RegNetY-256GF
with LARS momentum is ~12 GB: 64 ranks would read ~750 GB per restart).
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from seer_core.distributed import rank_and_world
from services.s3 import RetryExhausted, RetryPolicy, call_with_retry

log = logging.getLogger("seer.trainer")
T = TypeVar("T")

FIRST_DELAY_S = 2.0
MAX_DELAY_S = 60.0


class StoreUnavailable(RuntimeError):
    """The checkpoint store stayed unreachable for longer than the configured grace."""


class Unusable(RuntimeError):
    """The data an attempt read is unusable on this rank or another: raised on every rank."""


class Outcome(enum.IntEnum):
    """One rank's result of an attempt; the group acts on the worst (MAX) of them."""

    OK = 0
    STORE = 1  # the store could not be reached: every rank waits, then all try again
    BAD = 2  # the data itself is unusable (corrupt, missing, wrong shapes): every rank skips it
    GIVE_UP = 3  # a store error past this rank's grace: every rank raises StoreUnavailable


def is_store_error(exc: BaseException) -> bool:
    """An outage or throttling of the store (wait), as opposed to an answer about the data."""
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError)


@dataclass
class StoreWait:
    """One wait for the store; ``on_wait(seconds)`` gets the time waited so far (0 once the store
    answers again): the trainer's gauge."""

    what: str
    grace_s: float
    on_wait: Callable[[float], None] = lambda _seconds: None
    sleep: Callable[[float], None] = time.sleep
    started: float = field(default_factory=time.monotonic)
    attempt: int = 0

    def retrying(self, exc: BaseException, attempt: int, delay: float) -> None:
        self.attempt, waited = attempt, time.monotonic() - self.started
        self.on_wait(waited)
        if attempt == 1 or attempt % 10 == 0:
            log.warning("checkpoint store unreachable (%s), waiting to %s: attempt %d, %.0f s so "
                        "far, next try in %.1f s (gives up after %.0f min)", exc, self.what,
                        attempt, waited, delay, self.grace_s / 60)


def _unavailable(wait: StoreWait, last: BaseException | str) -> StoreUnavailable:
    wait.on_wait(0.0)
    return StoreUnavailable(
        f"the checkpoint store could not be reached to {wait.what} for "
        f"{(time.monotonic() - wait.started) / 60:.1f} min (checkpoint.store_grace_minutes="
        f"{wait.grace_s / 60:g}); last error: {last}")


def wait_for_store(action: Callable[[], T], wait: StoreWait, budget_s: float | None = None) -> T:
    """`action()`, retried through store errors until it succeeds or `budget_s` (default: the
    grace) runs out; any other exception propagates at once. For one process (a writer thread,
    the driver); ranks that must stay in step use `agree_with_retry`."""
    policy = RetryPolicy(budget_s=wait.grace_s if budget_s is None else budget_s,
                         base_s=FIRST_DELAY_S, cap_s=MAX_DELAY_S)
    try:
        result = call_with_retry(action, policy, random.Random(0), is_store_error,
                                 wait.retrying, wait.sleep, capped=False)
    except RetryExhausted as exc:
        raise _unavailable(wait, exc.last) from exc.last
    if wait.attempt:
        log.warning("checkpoint store reachable again: %s after %d attempt(s), %.0f s",
                    wait.what, wait.attempt, time.monotonic() - wait.started)
        wait.on_wait(0.0)
    return result


def _device(device: torch.device | str) -> torch.device:
    return torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")


def worst(code: int, device: torch.device | str = "cpu") -> int:
    """The MAX of `code` over all ranks (a collective: every rank calls it equally often)."""
    if rank_and_world()[1] <= 1:
        return code
    flag = torch.tensor([code], dtype=torch.int64, device=_device(device))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def agree_with_retry(attempt: Callable[[], T], wait: StoreWait,
                     device: torch.device | str = "cpu",
                     is_bad: Callable[[BaseException], bool] = lambda _exc: True) -> T:
    """Runs `attempt` on every rank until every rank succeeds; a collective (one vote per try).

    - a store error on any rank: every rank sleeps the same backoff, then all try again;
    - a store error past a rank's grace: that rank votes GIVE_UP and every rank raises
      `StoreUnavailable` in the same round. Giving up on each rank's own clock would let one
      rank leave while the others, a little behind, wait in the next vote until
      `train.collective_timeout_s`; for the same reason no sleep is clipped to a rank's grace;
    - an exception for which `is_bad` is true, on any rank: every rank raises `Unusable`
      (chained to its own error, if it had one), so that all move on together;
    - any other exception propagates on its rank (a bug: the group restarts).
    """
    def voted() -> T:
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
        if code == Outcome.STORE and time.monotonic() - wait.started >= wait.grace_s:
            code = Outcome.GIVE_UP
        group = worst(int(code), device)
        if group == Outcome.GIVE_UP:
            raise _unavailable(wait, error or "a store error on another rank") from error
        if group == Outcome.BAD:
            if code == Outcome.BAD:
                raise Unusable(f"{wait.what}: {error}") from error
            raise Unusable(f"{wait.what}: unusable on another rank")
        if group == Outcome.STORE:
            raise error or OSError("store error on another rank")
        return result  # type: ignore[return-value]

    return wait_for_store(voted, wait, budget_s=math.inf)  # the vote alone gives up


def map_leaves(value: Any, kind: type, fn: Callable[[Any], Any]) -> Any:
    """`value` with every leaf of type `kind` replaced by `fn(leaf)`, through dicts, lists and
    tuples, in order (two walks of one structure meet the leaves alike)."""
    if isinstance(value, kind):
        return fn(value)
    if isinstance(value, dict):
        return {key: map_leaves(item, kind, fn) for key, item in value.items()}
    if isinstance(value, list | tuple):
        items = [map_leaves(item, kind, fn) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return value


@dataclass(frozen=True)
class _TensorSlot:
    """Where a tensor goes in a broadcast skeleton: its index, shape and dtype."""

    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype


def broadcast_state(state: Any, src: int = 0, device: torch.device | str = "cpu") -> Any:
    """`state` from rank `src` on every rank (a collective; other ranks pass anything): the
    structure and plain values as one pickled object, then each tensor broadcast into a buffer
    of its shape (no pickling of gigabytes); on `device` for NCCL, on the CPU for gloo."""
    rank, world = rank_and_world()
    if world <= 1:
        return state
    tensors: list[torch.Tensor] = []

    def slot(tensor: torch.Tensor) -> _TensorSlot:
        tensors.append(tensor)
        return _TensorSlot(len(tensors) - 1, tuple(tensor.shape), tensor.dtype)

    box = [map_leaves(state, torch.Tensor, slot) if rank == src else None]
    dist.broadcast_object_list(box, src=src)
    on = _device(device)

    def receive(where: _TensorSlot) -> torch.Tensor | None:
        if rank == src:
            buffer = tensors[where.index].detach().to(on).contiguous()
        else:
            buffer = torch.empty(where.shape, dtype=where.dtype, device=on)
        dist.broadcast(buffer, src=src)
        return None if rank == src else buffer  # the sender keeps no second copy

    received = map_leaves(box[0], _TensorSlot, receive)
    return state if rank == src else received
