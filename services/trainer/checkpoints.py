"""Writing checkpoints through `ray.train.report` and restoring the newest one."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import torch.distributed as dist

from seer_core.checkpoint import (
    STATE_FILE,
    CheckpointLoadError,
    load_state,
    save_state,
    step_dir_name,
)
from seer_core.config import SeerConfig
from seer_core.training import (
    StepResult,
    TrainState,
    load_state_dict,
    state_dict,
)
from services.storage import META_FILE, RunStorage, resolve_storage

log = logging.getLogger("seer.trainer")


def storage_for(cfg: SeerConfig) -> RunStorage:
    return resolve_storage(cfg.checkpoint.storage, cfg.checkpoint.run_name,
                           cfg.checkpoint.endpoint_url)


def _queue_file(rank: int) -> str:
    return f"queue_rank{rank:05d}.pt"


def report_checkpoint(state: TrainState, rank: int, result: StepResult | None,
                      extra: Mapping[str, float] | None = None) -> None:
    """Every rank calls this together: rank 0 writes the state, each rank its own queue."""
    import ray.train

    metrics = {
        "step": state.step,
        "images_seen": state.images_seen,
        "loss": result.loss if result else float("nan"),
        "lr": result.lr if result else state.schedule.lr,
        **(extra or {}),
    }
    with tempfile.TemporaryDirectory(prefix="seer-ckpt-") as tmp:
        wrote = False
        if rank == 0:
            save_state(state_dict(state), Path(tmp) / STATE_FILE)
            meta = {**metrics, "time": time.time(), "run_name": state.cfg.checkpoint.run_name}
            (Path(tmp) / META_FILE).write_text(json.dumps(meta))
            wrote = True
        if state.queue is not None:
            save_state(state.queue.state_dict(), Path(tmp) / _queue_file(rank))
            wrote = True
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if wrote else None
        ray.train.report(metrics, checkpoint=checkpoint,
                         checkpoint_dir_name=step_dir_name(state.step))


def checkpoints_newest_first(storage: RunStorage, rank: int, world: int) -> list[str]:
    """Complete checkpoints in the run's storage, newest first, as rank 0 sees them.

    Not `ray.train.get_checkpoint()`: Ray hands a restarted group the newest checkpoint its
    controller has *registered*, and a worker killed moments after reporting leaves a complete,
    newer checkpoint that was never registered (seen in tests). Ray writes into this same
    storage, so the listing covers its checkpoints too, and nothing written is thrown away.
    Rank 0 lists and broadcasts so that every rank loads the same one.
    """
    choice: list[list[str]] = [[]]
    if rank == 0:
        choice[0] = [path for _, path in reversed(storage.list_checkpoints())]
    if world > 1:
        dist.broadcast_object_list(choice, src=0)
    return choice[0]


def restore(state: TrainState, rank: int, world: int) -> str | None:
    """Loads the newest loadable checkpoint (an unreadable one, e.g. cut short by a crash while
    it was copied, is skipped with an error). Returns its path, or None for a fresh start."""
    import ray.train

    storage = storage_for(state.cfg)
    for path in checkpoints_newest_first(storage, rank, world):
        checkpoint = ray.train.Checkpoint(path=path, filesystem=storage.filesystem)
        try:
            with checkpoint.as_directory() as directory:
                saved = load_state(Path(directory) / STATE_FILE, map_location="cpu")
                queue_path = Path(directory) / _queue_file(rank)
                queue = load_state(queue_path) if queue_path.is_file() else None
        except (CheckpointLoadError, OSError) as exc:
            log.error("rank %d: skipping unreadable checkpoint %s: %s", rank, path, exc)
            continue
        load_state_dict(state, saved)
        if state.queue is not None:
            if queue is not None:
                state.queue.load_state_dict(queue, strict=False)
            else:
                log.warning("no saved queue for rank %d in %s: it starts empty", rank, path)
        return path
    return None
