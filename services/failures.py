"""Telling a deterministic failure (end the run) from a transient one (restart the workers).

Ray Train restarts a failed worker group for ever (`FailureConfig(max_failures=-1)`): right for
a killed worker or a lost node, which a restart fixes, and wrong for a bug or a bad input that
fails the same way every time, which then restarts without end while nobody watches. The rule
here: the *same* error (type and message) at the *same* step, `limit` times in a row, with no
progress past that step in between, is deterministic. Anything else (another error, another
step, or a report of a step beyond the failure) starts the count again.

Pure Python: the control actor (`services.control.RunControl`) holds one tracker for the run,
because it outlives the worker groups that Ray Train restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Long messages (a tensor in an error) are cut: the signature is for comparing and printing.
MAX_MESSAGE = 500


def failure_signature(exc: BaseException) -> str:
    """`Type: message`, the identity of a failure across restarts."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


@dataclass
class Failure:
    rank: int
    step: int
    signature: str


class FailureTracker:
    """Counts repeats of one failure; `fatal` is set once they reach `limit`."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
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
