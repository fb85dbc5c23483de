"""The run's control actor, between the `seer pretrain` driver and the training workers.

The SIGTERM of `ray job stop` (or of a pod) reaches the driver, not the workers' training
threads (where no handler can be installed): the driver leaves a stop request here, rank 0 polls
it and broadcasts it, every rank checkpoints and returns. Rank 0 leaves its progress here for the
driver to print without a barrier; workers leave their warnings (:class:`WarningRelay`), since a
local run keeps Ray's own chatter out of the terminal.

Outliving the worker groups Ray Train restarts (for ever: right for a lost node, wrong for a bug
that fails the same way every time), it also tells a deterministic failure from a transient one
(:class:`FailureTracker`): the *same* error at the *same* step, `limit` times in a row with no
progress past that step in between, ends the run; anything else starts the count again.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, NamedTuple

import ray

#: Long messages (a tensor in an error) are cut: the signature is for comparing and printing.
MAX_MESSAGE = 500
#: Notes kept for the driver; a driver that falls further behind loses the oldest ones.
MAX_NOTES = 200


class Failure(NamedTuple):
    rank: int
    step: int
    signature: str


def failure_signature(exc: BaseException) -> str:
    """`Type: message`, the identity of a failure across restarts."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


class FailureTracker:
    """Counts repeats of one failure; `fatal` is set once they reach `limit`. Pure Python."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # >= 1: train.max_repeated_failures is a PosInt
        self.last: Failure | None = None
        self.count = 0
        self.fatal: str | None = None

    def failed(self, rank: int, step: int, signature: str) -> int:
        """Records one worker's failure; returns how many times in a row it has happened.

        Several ranks failing in the same attempt count once: a repeat needs a new attempt,
        which shows as the same rank failing again.
        """
        last = self.last
        if last is not None and last.step == step and last.signature == signature:
            if rank == last.rank:  # the rank that first failed so: one count per attempt
                self.count += 1
        else:
            self.count = 1
            self.last = Failure(rank, step, signature)
        if self.count >= self.limit and self.fatal is None:
            self.fatal = (
                f"the same error stopped the workers at step {step} {self.count} times in a "
                f"row, so a restart will not fix it: {signature}"
            )
        return self.count

    def progressed(self, step: int) -> None:
        """A step beyond the last failure was reached: that failure was not deterministic."""
        if self.last is not None and step > self.last.step:
            self.last, self.count = None, 0


@ray.remote(num_cpus=0, max_restarts=-1)
class RunControl:
    def __init__(self, max_repeated_failures: int, started_at: float) -> None:
        self._failures = FailureTracker(max_repeated_failures)
        # An argument, not read here: a restarted actor (max_restarts=-1) runs __init__ again
        # with the same arguments, and the run's clock must not restart with it.
        self._started_at = started_at
        self._stop_reason: str | None = None
        self._progress: dict[str, Any] = {}
        self._notes: collections.deque[tuple[int, str]] = collections.deque(maxlen=MAX_NOTES)
        self._next_note = 0

    def run_seconds(self) -> float:
        """Seconds since this `seer pretrain` began (a resumed run's budget starts again), for
        `train.max_minutes`: restarted worker groups share one budget, and no worker compares
        its own clock with the driver's."""
        return max(0.0, time.time() - self._started_at)

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def stop_reason(self) -> str | None:
        return self._stop_reason

    def report(self, progress: dict[str, Any]) -> None:
        self._progress = dict(progress)
        if isinstance(progress.get("step"), int):
            self._failures.progressed(progress["step"])

    def failed(self, rank: int, signature: str) -> int:
        """A worker's training function raised; returns the repeat count. The failure's step is
        the newest one rank 0 reported: each attempt replays the same steps from the same
        checkpoint, so a deterministic failure shows the same one."""
        step = self._progress.get("step", -1)
        return self._failures.failed(rank, step if isinstance(step, int) else -1, signature)

    def give_up(self, reason: str) -> None:
        """A worker found a reason the run cannot go on that no restart would change (the store
        unreachable past its grace, no usable committed checkpoint): fatal at once."""
        if self._failures.fatal is None:
            self._failures.fatal = reason

    def fatal(self) -> str | None:
        """Why the run must end instead of restarting (a deterministic failure), or None."""
        return self._failures.fatal

    def progress(self) -> dict[str, Any]:
        return self._progress

    def note(self, text: str) -> None:
        self._notes.append((self._next_note, text))
        self._next_note += 1

    def notes(self, since: int) -> list[tuple[int, str]]:
        return [(n, text) for n, text in self._notes if n >= since]


def control_actor_name(run_name: str) -> str:
    return f"seer-control-{run_name}"


def create_control(run_name: str, max_repeated_failures: int = 3) -> ray.actor.ActorHandle:
    """The driver's control actor (named, so workers and restarted workers find it); now is
    the run's start for `train.max_minutes`."""
    return RunControl.options(
        name=control_actor_name(run_name), get_if_exists=True, lifetime=None
    ).remote(max_repeated_failures, time.time())


def ask(control: Any, method: str, *args: Any, timeout: float) -> Any:
    """A control actor's answer, or None when it is busy or gone (the next poll will tell)."""
    try:
        return ray.get(getattr(control, method).remote(*args), timeout=timeout)
    except Exception:
        return None


def find_control(run_name: str) -> ray.actor.ActorHandle | None:
    try:
        return ray.get_actor(control_actor_name(run_name))
    except ValueError:
        return None


class WarningRelay(logging.Handler):
    """Sends a worker's seer warnings and errors to the control actor, for the driver to print.

    Fire-and-forget (`.remote()` without waiting): a slow or restarting control actor must never
    stall a training step, and a lost note is better than a blocked worker.
    """

    def __init__(self, control: ray.actor.ActorHandle, origin: str) -> None:
        super().__init__(level=logging.WARNING)
        self.control, self.origin = control, origin

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.control.note.remote(f"{self.origin} {record.levelname}: {record.getMessage()}")
        except Exception:  # logging must never raise into the training loop
            self.handleError(record)


def relay_warnings(run_name: str, origin: str, logger_name: str = "seer") -> WarningRelay | None:
    """Attaches a :class:`WarningRelay` to `logger_name` (once per process); None without a
    control actor (a run started without the `seer pretrain` driver)."""
    logger = logging.getLogger(logger_name)
    for handler in logger.handlers:
        if isinstance(handler, WarningRelay):
            return handler
    control = find_control(run_name)
    if control is None:
        return None
    relay = WarningRelay(control, origin)
    logger.addHandler(relay)
    return relay
