"""What the loop decides between steps: checkpoint or stop (rank 0, broadcast), roll back after
repeated non-finite losses, call collapse; and the run-level meters.

`ray.train.report` is a barrier every rank must reach equally often, and wall clocks differ
between machines, so anything decided from time or from the driver is decided once, on rank 0.
The health rules are plain functions so that they have their own tests.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from seer_core.config import SeerConfig
from seer_core.swav import collapse_suspected
from seer_core.training import StepResult
from seer_core.training.step import MIN_LOSS_SCALE
from services.driver.control import ask

log = logging.getLogger("seer.trainer")

#: Prototype-usage entropy (fraction of ln K) under which the batch is judged collapsed.
USAGE_ENTROPY_FLOOR = 0.05


class Decider:
    """Checkpoint / stop decisions of rank 0, shared with every rank by one broadcast.

    `train.max_minutes` is a budget for the run, not for each worker group: Ray Train restarts
    the whole group after a failure, and a clock that restarted with it would let a run that
    keeps failing train for ever. So rank 0 reads the time since the run's start from the
    driver's control actor, which outlives the groups; without one (a run not started by the
    driver) or when it cannot be read, the group's own start is the fallback.
    """

    def __init__(self, cfg: SeerConfig, rank: int, world: int, device: torch.device,
                 control: Any) -> None:
        self.cfg, self.rank, self.world, self.device, self.control = (
            cfg, rank, world, device, control)
        run_seconds = None
        if rank == 0 and control is not None and cfg.train.max_minutes:
            run_seconds = read_run_seconds(control)
        # In this process's monotonic clock: later wall-clock steps (NTP) move nothing.
        self.started = time.monotonic() - max(0.0, run_seconds or 0.0)
        self.last_checkpoint = time.monotonic()
        self.last_poll = 0.0
        self.stop_reason: str | None = None

    def _poll_control(self) -> str | None:
        if self.control is None or time.monotonic() - self.last_poll < 1.0:
            return None
        self.last_poll = time.monotonic()
        # None when the driver went away: keep training, the job owns our lifetime.
        return ask(self.control, "stop_reason", timeout=5)

    def decide(self, step: int) -> tuple[bool, bool]:
        """(checkpoint now, stop now) — identical on every rank."""
        flags = torch.zeros(2, dtype=torch.int64)
        if self.rank == 0:
            train, checkpoint = self.cfg.train, self.cfg.checkpoint
            reason = None
            if train.max_steps and step >= train.max_steps:
                reason = f"reached train.max_steps={train.max_steps}"
            elif train.max_minutes and time.monotonic() - self.started >= train.max_minutes * 60:
                reason = f"reached train.max_minutes={train.max_minutes}"
            else:
                reason = self._poll_control()
            due_minutes = checkpoint.every_minutes and (
                time.monotonic() - self.last_checkpoint >= checkpoint.every_minutes * 60)
            flags[0] = int(step % checkpoint.every_steps == 0 or bool(due_minutes))
            flags[1] = int(reason is not None)
            self.stop_reason = reason
        if self.world > 1:
            on_device = flags.to(self.device)
            dist.broadcast(on_device, src=0)
            flags = on_device.cpu()
        checkpoint_now, stop = bool(flags[0]), bool(flags[1])
        if checkpoint_now or stop:
            self.last_checkpoint = time.monotonic()
        return checkpoint_now, stop


def read_run_seconds(control: Any, timeout_s: float = 10.0) -> float | None:
    """The seconds since the run started, from the driver's control actor; None (with a
    warning) when it cannot answer in time."""
    import ray

    try:
        return float(ray.get(control.run_seconds.remote(), timeout=timeout_s))
    except Exception as exc:  # the driver went away or the actor is restarting
        log.warning("the run's start could not be read from the control actor (%s): "
                    "train.max_minutes counts from this worker group's start", exc)
        return None


class RunMeter:
    """Throughput, data-wait share and step-time spread over the run so far, past the first
    (warm-up) steps. The spread (median and p99 of the time between steps, over the last
    ``window`` steps) shows a periodic stall that an average hides."""

    def __init__(self, skip_steps: int, window: int = 10_000) -> None:
        self.skip = skip_steps
        self.start: float | None = None
        self.images = 0
        self.wait = 0.0
        self.last = 0.0
        self.step_seconds: deque[float] = deque(maxlen=window)

    def add(self, images: int, wait: float) -> None:
        now = time.perf_counter()
        if self.skip > 0:
            self.skip -= 1
            if self.skip == 0:
                self.start = self.last = now
            return
        self.images += images
        self.wait += wait
        self.step_seconds.append(now - self.last)
        self.last = now

    def summary(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start if self.start is not None else 0.0
        if elapsed <= 0 or not self.images:
            return {}
        steps = sorted(self.step_seconds)
        return {"run_images_per_second": self.images / elapsed,
                "run_data_wait_share": self.wait / elapsed,
                "run_step_seconds_p50": steps[len(steps) // 2],
                "run_step_seconds_p99": steps[min(len(steps) - 1, int(0.99 * len(steps)))]}


class NonFiniteLossError(RuntimeError):
    """Raised on every rank together after repeated non-finite losses: Ray Train restarts the
    group from the newest checkpoint, the same path as any other worker failure."""


def check_non_finite(bad_steps: int, step: int, cfg: SeerConfig) -> None:
    """Raises once `train.max_bad_steps` steps in a row had a non-finite loss. `bad_steps` is
    decided from an all-reduced flag, so every rank raises at the same step."""
    if bad_steps >= cfg.train.max_bad_steps:
        raise NonFiniteLossError(
            f"{bad_steps} non-finite losses in a row at step {step}: "
            "rolling back to the newest checkpoint"
        )


def skip_note(result: StepResult, bad_steps: int) -> str | None:
    """The error line a skipped step is worth, or None.

    A non-finite loss always is one. A step the fp16 grad scaler skipped (inf/NaN gradients,
    finite loss) is the scaler's normal work, and a line per skip from every rank would bury the
    real warnings (`seer_train_loss_scale` and `seer_train_skipped_steps_total` show them); it
    is one once it counts as a bad step (the scale below the floor where no scale fits).
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

    The loss starts above ln K, so collapse is judged only once the warmup is over and the
    prototypes have been free to move, every tenth log interval, never on a skipped step.
    Collapse: a loss no better than chance (≈ ln K) or usage concentrated on a few prototypes.
    """
    settled = result.step > max(cfg.schedule.warmup_steps, cfg.swav.freeze_prototypes_steps)
    due = result.step % max(1, 10 * cfg.train.log_every_steps) == 0
    if not settled or not due or result.skipped:
        return None
    return collapse_suspected(result.loss, cfg.model.prototypes[0]) or (
        result.usage_entropy < USAGE_ENTROPY_FLOOR
    )


class WarningThrottle:
    """When a persisting condition is worth a log line: at its onset, then at most once every
    `repeat_s` seconds while it lasts (a collapse judged every ten log intervals would print a
    line every few seconds, in a terminal that also carries the progress lines)."""

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
