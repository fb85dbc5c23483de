"""Saving a checkpoint and waiting for all of it, for the checkpoint tests (the training loop
keeps one `CheckpointWriter` and does not wait)."""

from __future__ import annotations

from seer_core.checkpoint import step_dir_name
from seer_core.training import TrainState
from services.storage import RunStorage
from services.trainer.checkpoint_writer import CheckpointWriter


def save_checkpoint(state: TrainState, storage: RunStorage, rank: int = 0, world: int = 1) -> str:
    """A checkpoint of the current step, written, uploaded and committed before it returns;
    every rank of a group calls it together. Returns its path."""
    cfg = state.cfg.checkpoint
    writer = CheckpointWriter(storage, rank, world, state.device, keep=cfg.keep,
                              grace_s=cfg.store_grace_minutes * 60)
    try:
        writer.start(state, {"step": state.step, "images_seen": state.images_seen})
        writer.finish()
    finally:
        writer.close()
    return f"{storage.run_path}/{step_dir_name(state.step)}"
