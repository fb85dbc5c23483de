"""Checkpoint and stop decisions, taken on rank 0 and broadcast, and the run-level meters.

`ray.train.report` is a barrier every rank must reach equally often, and wall clocks differ
between machines, so anything decided from time or from the driver is decided once, on rank 0."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import torch
import torch.distributed as dist

from seer_core.config import SeerConfig

log = logging.getLogger("seer.trainer")


class Decider:
    """Checkpoint / stop decisions of rank 0, shared with every rank by one broadcast.

    `train.max_minutes` is a budget for the run, not for each worker group: Ray Train restarts
    the whole group after a failure, and a clock that restarted with it would let a run that
    keeps failing train for ever. The run's start is the driver's (`seer pretrain`): its
    control actor outlives the groups and rank 0 reads the time elapsed since once, here
    (`run_seconds`, or from `control`). Without a control actor (a run not started by the
    driver) or when it cannot be read, the group's own start is the fallback, as before.
    """

    def __init__(self, cfg: SeerConfig, rank: int, world: int, device: torch.device,
                 control: Any, run_seconds: float | None = None) -> None:
        """`run_seconds`: how long the run had been going when this group started (read from
        `control` on rank 0 when None and a time limit is set)."""
        self.cfg = cfg
        self.rank = rank
        self.world = world
        self.device = device
        self.control = control
        now = time.monotonic()
        if run_seconds is None and rank == 0 and control is not None and cfg.train.max_minutes:
            run_seconds = read_run_seconds(control)
        # Converted once into this process's monotonic clock: later wall-clock steps (NTP)
        # on this node move nothing.
        self.started = now - max(0.0, run_seconds or 0.0)
        self.last_checkpoint = time.monotonic()
        self.last_poll = 0.0
        self.stop_reason: str | None = None

    def _poll_control(self) -> str | None:
        if self.control is None or time.monotonic() - self.last_poll < 1.0:
            return None
        self.last_poll = time.monotonic()
        import ray

        try:
            return ray.get(self.control.stop_reason.remote(), timeout=5)
        except Exception:  # the driver went away: keep training, the job owns our lifetime
            return None

    def decide(self, step: int) -> tuple[bool, bool]:
        """(checkpoint now, stop now) — identical on every rank."""
        flags = torch.zeros(2, dtype=torch.int64)
        if self.rank == 0:
            cfg = self.cfg
            minutes = (time.monotonic() - self.started) / 60
            reason = None
            if cfg.train.max_steps and step >= cfg.train.max_steps:
                reason = f"reached train.max_steps={cfg.train.max_steps}"
            elif cfg.train.max_minutes and minutes >= cfg.train.max_minutes:
                reason = f"reached train.max_minutes={cfg.train.max_minutes}"
            else:
                reason = self._poll_control()
            due_minutes = cfg.checkpoint.every_minutes and (
                time.monotonic() - self.last_checkpoint >= cfg.checkpoint.every_minutes * 60
            )
            flags[0] = int(step % cfg.checkpoint.every_steps == 0 or bool(due_minutes))
            flags[1] = int(reason is not None)
            self.stop_reason = reason
        if self.world > 1:
            on_device = flags.to(self.device)
            dist.broadcast(on_device, src=0)
            flags = on_device.cpu()
        checkpoint, stop = bool(flags[0]), bool(flags[1])
        if checkpoint or stop:
            self.last_checkpoint = time.monotonic()
        return checkpoint, stop


def read_run_seconds(control: Any, timeout_s: float = 10.0) -> float | None:
    """The seconds since the run started, from the driver's control actor; None (with a
    warning) when it cannot answer in time: the group's start is the fallback then."""
    import ray

    try:
        return float(ray.get(control.run_seconds.remote(), timeout=timeout_s))
    except Exception as exc:  # the driver went away or the actor is restarting
        log.warning("the run's start could not be read from the control actor (%s): "
                    "train.max_minutes counts from this worker group's start", exc)
        return None


class RunMeter:
    """Throughput, data-wait share and step-time spread over the run so far, past the first
    (warm-up) steps.

    The spread (median and 99th percentile of the wall time between steps, over the last
    ``window`` steps) is what shows a periodic stall that an average hides: a pass boundary
    every few dozen steps moves the p99, barely the mean.
    """

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
