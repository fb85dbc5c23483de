"""The training function Ray Train runs: the loop, plus a record of how it failed.

Ray Train restarts a failed worker group for ever; whether that is right depends on the failure
(`services.failures`). Each worker tells the run's control actor about an exception before
re-raising it, so that Ray Train still restarts the group as before. Once the same failure has
repeated `train.max_repeated_failures` times the control actor calls it fatal; the group Ray
Train starts next returns at once, so `fit()` ends without aborting anything, and the driver
turns the fatal reason into a clear error and a non-zero exit. Two failures are fatal at once,
because a restart could only meet them again: the checkpoint store unreachable for longer than
`checkpoint.store_grace_minutes`, and a run whose committed checkpoints are all unusable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from seer_core.config import config_from_dict
from services.driver.control import failure_signature
from services.trainer.checkpoints import NoUsableCheckpoint
from services.trainer.loop import train_loop_per_worker
from services.trainer.store_wait import StoreUnavailable

log = logging.getLogger("seer.trainer")


def guarded_train_loop(loop_config: Mapping[str, Any]) -> None:
    reason = fatal_reason(loop_config)
    if reason is not None:
        log.error("not training: %s", reason)
        return
    try:
        train_loop_per_worker(loop_config)
    except Exception as exc:
        report_failure(loop_config, exc)
        raise


def fatal_reason(loop_config: Mapping[str, Any]) -> str | None:
    """The control actor's verdict that this run cannot succeed, if it gave one."""
    import ray

    from services.driver.control import find_control

    control = find_control(config_from_dict(loop_config["config"]).checkpoint.run_name)
    if control is None:
        return None
    return ray.get(control.fatal.remote(), timeout=60)


def report_failure(loop_config: Mapping[str, Any], exc: BaseException) -> None:
    """Best effort: a failure to report must not hide the failure being reported."""
    import ray
    import ray.train

    from services.driver.control import find_control

    try:
        run_name = config_from_dict(loop_config["config"]).checkpoint.run_name
        rank = ray.train.get_context().get_world_rank()
        control = find_control(run_name)
        if control is None:
            return
        if isinstance(exc, (StoreUnavailable, NoUsableCheckpoint)):
            ray.get(control.give_up.remote(failure_signature(exc)), timeout=30)
            log.error("rank %d: the run cannot go on: %s", rank, failure_signature(exc))
            return
        count = ray.get(control.failed.remote(rank, failure_signature(exc)), timeout=30)
        log.error("rank %d failed (%d time(s) in a row): %s", rank, count,
                  failure_signature(exc))
    except Exception:  # the original exception is what matters; this one is only logged
        log.exception("could not report a worker failure to the control actor")
