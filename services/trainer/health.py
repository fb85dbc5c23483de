"""The run's health checks between steps: repeated non-finite losses and collapse.

Kept apart from the worker loop so the rules (when to roll back, when to call collapse) are plain
functions with their own tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from seer_core.config import SeerConfig
from seer_core.swav import collapse_suspected
from seer_core.training import StepResult
from seer_core.training.step import MIN_LOSS_SCALE

#: Prototype-usage entropy (fraction of ln K) under which the batch is judged collapsed.
USAGE_ENTROPY_FLOOR = 0.05


class NonFiniteLossError(RuntimeError):
    """Raised on every rank together after repeated non-finite losses.

    Ray Train's FailureConfig(max_failures=-1) then restarts the worker group from the newest
    checkpoint: the rollback uses the same path as any other worker failure.
    """


def check_non_finite(bad_steps: int, step: int, cfg: SeerConfig) -> None:
    """Raises once `train.max_bad_steps` steps in a row had a non-finite loss.

    `bad_steps` comes from the train step, which decides it from an all-reduced flag, so every
    rank raises at the same step and no rank is left waiting in a collective.
    """
    if bad_steps >= cfg.train.max_bad_steps:
        raise NonFiniteLossError(
            f"{bad_steps} non-finite losses in a row at step {step}: "
            "rolling back to the newest checkpoint"
        )


def skip_note(result: StepResult, bad_steps: int) -> str | None:
    """The error line a skipped step is worth, or None.

    A non-finite loss always is one. A step the fp16 grad scaler skipped (inf/NaN gradients,
    finite loss) is not: halving the loss scale until the gradients fit is the scaler's normal
    work (the first steps of an fp16 run, then one now and then), and a line per skip from every
    rank would bury the real warnings in the driver's terminal; `seer_train_loss_scale` and
    `seer_train_skipped_steps_total` show them. It becomes one once it counts as a bad step
    (the scale fell below the floor where no scale makes the gradients fit).
    """
    if not result.skipped:
        return None
    if not result.overflow:
        return f"non-finite loss at step {result.step} ({bad_steps} in a row)"
    if result.loss_scale is not None and result.loss_scale < MIN_LOSS_SCALE:
        return (f"inf/NaN gradients at step {result.step} with the loss scale down to "
                f"{result.loss_scale:g}, where no scale fits them ({bad_steps} bad steps in a row)")
    return None


def collapse_verdict(result: StepResult, cfg: SeerConfig) -> bool | None:
    """True/False on the steps where collapse is judged, None on the others.

    The loss starts above ln K at initialisation, so collapse is judged only once the warmup is
    over and the prototypes have been free to move, every tenth log interval, and never on a
    skipped step. Collapse: a loss no better than chance (≈ ln K) or prototype usage concentrated
    on a few prototypes.
    """
    settled = result.step > max(cfg.schedule.warmup_steps, cfg.swav.freeze_prototypes_steps)
    due = result.step % max(1, 10 * cfg.train.log_every_steps) == 0
    if not settled or not due or result.skipped:
        return None
    return collapse_suspected(result.loss, cfg.model.prototypes[0]) or (
        result.usage_entropy < USAGE_ENTROPY_FLOOR
    )


class WarningThrottle:
    """Says when a persisting condition is worth a log line: when it starts, then at most once
    every `repeat_s` seconds while it lasts. A collapse judged every ten log intervals would
    otherwise print a line every few seconds for as long as it lasts, in a terminal that also
    carries the progress lines."""

    def __init__(self, repeat_s: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self.repeat_s, self.clock = repeat_s, clock
        self.active = False
        self.last = float("-inf")

    def should_warn(self, condition: bool) -> bool:
        now = self.clock()
        if not condition:
            self.active = False
            return False
        if not self.active or now - self.last >= self.repeat_s:
            self.active, self.last = True, now
            return True
        return False
