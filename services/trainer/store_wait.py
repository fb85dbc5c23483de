"""Waiting out a checkpoint store that cannot be reached, instead of taking it for corruption.

A bucket that throttles (`503 SlowDown` when every rank reads a large state at once) or a store
that is down for minutes is a transient condition of a weeks-long run: the run waits for it,
says so (log lines and the `seer_train_store_wait_seconds` gauge), and goes on from where it
was. Only after `checkpoint.store_grace_minutes` does it give up with :class:`StoreUnavailable`,
which ends the run with that message (a restart would only wait again).

What counts as "the store cannot be reached": an `OSError` (pyarrow raises its S3 and network
errors as `OSError`), except `FileNotFoundError`, which is an answer, not an outage. Everything
else (a file that does not unpickle, a missing key, a wrong shape) is about the checkpoint itself.

The delays are a pure function of the attempt number (capped exponential, jitter derived from
it), so that every rank of a group that retries together (`services.trainer.collective`) sleeps
the same time without a message.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger("seer.trainer")
T = TypeVar("T")

FIRST_DELAY_S = 2.0
MAX_DELAY_S = 60.0


class StoreUnavailable(RuntimeError):
    """The checkpoint store stayed unreachable for longer than the configured grace."""


def is_store_error(exc: BaseException) -> bool:
    """An outage or throttling of the store (wait), as opposed to an answer about the data."""
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError)


def backoff_delay(attempt: int, first: float = FIRST_DELAY_S, cap: float = MAX_DELAY_S) -> float:
    """Seconds to wait before retry `attempt` (1-based): doubling from `first`, capped at `cap`,
    with a jitter of up to 25% that is the same on every rank for the same attempt."""
    base = min(cap, first * 2 ** max(0, attempt - 1))
    return base * (1 + 0.25 * random.Random(attempt).random())


@dataclass
class StoreWait:
    """One wait for the store: attempts, elapsed time, the grace, and who to tell.

    ``on_wait(seconds)`` is called with the time waited so far (0 once the store answers again):
    the trainer points it at its gauge. ``sleep`` is injectable so tests need not wait.
    """

    what: str
    grace_s: float
    on_wait: Callable[[float], None] = lambda _seconds: None
    sleep: Callable[[float], None] = time.sleep
    attempt: int = 0
    started: float = field(default_factory=time.monotonic)

    def failed(self, exc: BaseException) -> None:
        """Records a store error and sleeps before the next try; raises once past the grace."""
        self.attempt += 1
        waited = time.monotonic() - self.started
        if waited >= self.grace_s:
            self.on_wait(0.0)
            raise StoreUnavailable(
                f"the checkpoint store could not be reached to {self.what} for {waited / 60:.1f}"
                f" min (checkpoint.store_grace_minutes={self.grace_s / 60:g}); last error: {exc}"
            ) from exc
        delay = min(backoff_delay(self.attempt), max(0.0, self.grace_s - waited))
        self.on_wait(waited)
        if self.attempt == 1 or self.attempt % 10 == 0:
            log.warning("checkpoint store unreachable (%s), waiting to %s: attempt %d, %.0f s so "
                        "far, next try in %.1f s (gives up after %.0f min)", exc, self.what,
                        self.attempt, waited, delay, self.grace_s / 60)
        self.sleep(delay)

    def succeeded(self) -> None:
        if self.attempt:
            log.warning("checkpoint store reachable again: %s after %d attempt(s), %.0f s",
                        self.what, self.attempt, time.monotonic() - self.started)
            self.on_wait(0.0)


def wait_for_store(action: Callable[[], T], wait: StoreWait) -> T:
    """`action()`, retried through store errors until it succeeds or the grace runs out; any
    other exception propagates at once. For one process (a writer thread, the driver); ranks
    that must stay in step use `services.trainer.collective.agree_with_retry`."""
    while True:
        try:
            result = action()
        except Exception as exc:
            if not is_store_error(exc):
                raise
            wait.failed(exc)
            continue
        wait.succeeded()
        return result
