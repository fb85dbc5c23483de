"""`train.max_minutes` is a budget for the run, not for each worker group (issue 17, point 13).

Ray Train restarts the whole worker group after a failure; each new group builds a new
`Decider`. Its clock used to start with the group, so a run that kept failing could train for
ever under a limit of minutes. The run's start is kept by the driver's control actor, which
outlives worker groups; rank 0 of a new group reads it once.
"""

from __future__ import annotations

import time
import uuid

import torch

from seer_core.config import load_config
from tests.waiting import wait_until


def _restarted(control) -> bool:
    """The actor answers, and from a new process (the note left before the kill is gone)."""
    import ray

    try:
        return ray.get(control.notes.remote(0), timeout=5) == []
    except Exception:  # still restarting
        return False


def test_a_group_started_late_in_the_run_stops_at_the_runs_budget(ray_cluster) -> None:
    import ray

    from services.driver.control import create_control
    from services.trainer.decisions import Decider

    budget_s = 1.5
    cfg = load_config("local", [f"train.max_minutes={budget_s / 60}"])
    control = create_control(f"clock-{uuid.uuid4().hex[:6]}")  # as the driver does
    try:
        ray.get(control.progress.remote(), timeout=30)  # the actor is up: the run has begun
        first = Decider(cfg, rank=0, world=1, device=torch.device("cpu"), control=control)
        assert first.decide(1) == (False, False)
        time.sleep(budget_s + 0.5)
        # The control actor's node went too (max_restarts=-1: Ray runs its __init__ again).
        ray.get(control.note.remote("before the restart"), timeout=30)
        ray.kill(control, no_restart=False)
        assert wait_until(lambda: _restarted(control), timeout=60)
        # The first group failed; Ray Train starts a new one from the newest checkpoint.
        restarted = Decider(cfg, rank=0, world=1, device=torch.device("cpu"), control=control)
        _, stop = restarted.decide(2)
        assert stop, "the restarted group's clock started again: the run's budget is spent"
        assert restarted.stop_reason == f"reached train.max_minutes={budget_s / 60}"
    finally:
        ray.kill(control)
