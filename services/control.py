"""A tiny actor between the driver and the training workers: stop requests and progress.

Ray Train runs the training function in a thread of each worker actor, where no signal handler
can be installed, and the SIGTERM of `ray job stop` (or of a Kubernetes pod) reaches the driver.
So the driver turns it into a stop request here; rank 0 polls it and broadcasts the decision,
every rank writes a final checkpoint and returns. Rank 0 also leaves its latest progress here so
the driver can print it and serve it on its status page without a barrier.
"""

from __future__ import annotations

import time
from typing import Any

import ray


@ray.remote(num_cpus=0, max_restarts=-1)
class RunControl:
    def __init__(self) -> None:
        self._stop_reason: str | None = None
        self._progress: dict[str, Any] = {}
        self._updated = 0.0

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def stop_reason(self) -> str | None:
        return self._stop_reason

    def report(self, progress: dict[str, Any]) -> None:
        self._progress = dict(progress)
        self._updated = time.time()

    def progress(self) -> dict[str, Any]:
        return {**self._progress, "updated": self._updated}


def control_actor_name(run_name: str) -> str:
    return f"seer-control-{run_name}"


def create_control(run_name: str) -> ray.actor.ActorHandle:
    """The driver's control actor (named, so workers and restarted workers find it)."""
    return RunControl.options(
        name=control_actor_name(run_name), get_if_exists=True, lifetime=None
    ).remote()


def find_control(run_name: str) -> ray.actor.ActorHandle | None:
    try:
        return ray.get_actor(control_actor_name(run_name))
    except ValueError:
        return None
