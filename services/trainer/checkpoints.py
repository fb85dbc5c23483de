"""Restoring the newest committed checkpoint on all ranks, through store outages.

A checkpoint is the folder `<storage>/<run>/step_<N>/` (`services.trainer.checkpoint_writer`):
`state.pt` (rank 0: what the ranks share), `meta.json` (rank 0: a summary for `seer status`),
`rank_<r>.pt` (rank r: its SwAV queue and random streams) and, last, `commit.json` (rank 0, after
every rank's upload: world size and queue geometry). Without the marker it is no checkpoint.

`restore` never rewinds: rank 0 lists the committed checkpoints and broadcasts the list; the
newest is read and, only if it is *proven* unusable (it does not unpickle, a file or key is
missing, a shape does not fit) on any rank, every rank moves to the next older one together,
and the skipped ones are un-committed so that the run writes those steps again. An unreachable
or throttling store is waited for by every rank together, never taken for corruption. A run
whose committed checkpoints are all unusable ends (`NoUsableCheckpoint`) instead of starting
over. Rank 0 alone reads `state.pt` and broadcasts it; each rank reads its own `rank_<r>.pt`
(with another world size, the old ranks' queues `queue_picks` deals it; a rank without saved
streams gets fresh ones).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seer_core.checkpoint import (
    COMMIT_FILE,
    STATE_FILE,
    CheckpointLoadError,
    load_state,
)
from seer_core.config import SeerConfig
from seer_core.swav.queue import gather_queue_rows, queue_picks
from seer_core.training import TrainState, load_state_dict
from seer_core.training.saved import load_rank_state_dict, seed_rank_streams
from services.storage import RunStorage, resolve_storage
from services.trainer.checkpoint_writer import rank_file
from services.trainer.collective import (
    StoreUnavailable,
    StoreWait,
    Unusable,
    agree_with_retry,
    broadcast_state,
    wait_for_store,
)

log = logging.getLogger("seer.trainer")
#: What proves a checkpoint unusable on one rank (and so, after the vote, on all of them): it
#: does not unpickle, a file or key is missing, a shape or type does not fit. Not `OSError`: a
#: store that cannot be reached is waited for (`collective`).
_CORRUPT = (CheckpointLoadError, FileNotFoundError, ValueError, KeyError, TypeError,
            RuntimeError)


def storage_for(cfg: SeerConfig) -> RunStorage:
    return resolve_storage(cfg.checkpoint.storage, cfg.checkpoint.run_name,
                           cfg.checkpoint.endpoint_url)


@dataclass
class LoadedCheckpoint:
    """What one rank read of a candidate checkpoint, not yet applied to its state."""

    path: str
    saved: dict[str, Any] | None  # the shared state (rank 0 reads it, then broadcasts it)
    streams: dict[str, Any] | None  # this rank's saved streams; None: derive fresh ones
    queue: dict[str, Any] | None  # this rank's queue state; None: it starts empty
    notes: list[str] = field(default_factory=list)  # what was dropped or derived, and why


def _read(storage: RunStorage, path: str, name: str, tmp: Path) -> dict[str, Any]:
    """Loads one file of a checkpoint (weights_only); from S3 through a local copy."""
    source = f"{path}/{name}"
    if storage.is_local:
        return load_state(source, map_location="cpu")
    local = tmp / name
    with storage.filesystem.open_input_stream(source) as stream, open(local, "wb") as out:
        shutil.copyfileobj(stream, out, 8 * 1024 * 1024)
    try:
        return load_state(local, map_location="cpu")
    finally:
        local.unlink(missing_ok=True)


def load_checkpoint(storage: RunStorage, path: str, state: TrainState, rank: int,
                    world: int) -> LoadedCheckpoint:
    """Reads what this rank needs of a checkpoint: rank 0 the shared state, every rank its own
    file (with another world size, the old ranks' files its queue share comes from). Raises
    `OSError` when the store cannot be reached, one of `_CORRUPT` when the checkpoint is unusable
    (its marker gone since the listing included)."""
    names = storage.folder_files(path)
    notes: list[str] = []
    parts: dict[int, dict[str, Any] | None] = {}
    with tempfile.TemporaryDirectory(prefix="seer-restore-") as tmp_name:
        tmp = Path(tmp_name)
        saved = _read(storage, path, STATE_FILE, tmp) if rank == 0 else None
        commit = storage.read_json(f"{path}/{COMMIT_FILE}")  # a store error propagates
        if commit is None:
            raise CheckpointLoadError(f"{path}/{COMMIT_FILE} is missing or not a JSON object")
        old_world = int(commit["world_size"])
        old_rows, old_filled = int(commit["queue_rows"]), int(commit["queue_filled"])
        missing = [rank_file(r) for r in range(old_world) if rank_file(r) not in names]
        if missing:
            raise CheckpointLoadError(f"{path} is committed but lacks {missing}")

        def old_rank(r: int) -> dict[str, Any] | None:
            if r not in parts:
                parts[r] = _read(storage, path, rank_file(r), tmp)
            return parts[r]

        streams = old_rank(rank) if rank < old_world else None
        if streams is None:
            notes.append(f"no saved random streams for rank {rank} (saved by {old_world} "
                         "rank(s)): fresh ones from train.seed, rank and step")
        queue = None
        if state.queue is not None:
            queue = _queue_for(state, rank, world, old_world, old_rows, old_filled, old_rank,
                               notes)
    return LoadedCheckpoint(path, saved, streams, queue, notes)


def _queue_for(state: TrainState, rank: int, world: int, old_world: int, old_rows: int,
               old_filled: int, old_rank: Callable[[int], dict[str, Any] | None],
               notes: list[str]) -> dict[str, Any] | None:
    """This rank's share of the saved queues (`queue_picks`), or None with a note why not."""
    assert state.queue is not None
    if old_rows == 0:
        notes.append("the checkpoint holds no SwAV queue: it starts empty")
        return None
    picks = queue_picks(old_world, old_rows, old_filled, rank, world, state.queue.length)
    sources = sorted({old for old, _ in picks})
    saved_parts = {old: (old_rank(old) or {}).get("queue") for old in sources}
    try:
        queue = gather_queue_rows(saved_parts, picks, state.queue.length,
                                  state.queue.crops_for_assign, state.queue.dim)
    except ValueError as exc:
        notes.append(f"saved SwAV queue dropped: {exc}")
        return None
    share = len(range(rank, max(0, min(old_filled, old_rows)) * old_world, world))
    if world != old_world or queue["filled"] < share:
        notes.append(f"SwAV queue: {queue['filled']} of {state.queue.length} rows from old "
                     f"rank(s) {sources} (saved by {old_world} rank(s) of {old_rows} rows); "
                     f"{share - queue['filled']} of this rank's share dropped (no room or "
                     "not saved)")
    return queue


def apply_checkpoint(state: TrainState, loaded: LoadedCheckpoint, rank: int) -> None:
    """Puts a checkpoint that every rank could read into this rank's state."""
    assert loaded.saved is not None, "apply after broadcast_state"
    load_state_dict(state, loaded.saved, per_rank=False)
    if loaded.streams is not None:
        try:
            load_rank_state_dict(state, loaded.streams)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # e.g. another device
            loaded.notes.append(f"saved random streams unusable ({exc}): fresh ones")
            seed_rank_streams(state, rank, state.step)
    else:
        seed_rank_streams(state, rank, state.step)
    if state.queue is not None and loaded.queue is not None:
        if torch.isfinite(loaded.queue["embeddings"]).all():
            state.queue.load_state_dict(loaded.queue)
        else:
            # Written before skipped steps stopped pushing: a NaN row would now never age out
            # and every step would be skipped. An empty queue refills in a few steps.
            loaded.notes.append("the saved queue holds non-finite rows: it starts empty")
    for note in loaded.notes:
        log.warning("rank %d: resuming from %s: %s", rank, loaded.path, note)


class NoUsableCheckpoint(RuntimeError):
    """The run has committed checkpoints and none of them can be loaded: starting again from
    step 0 would throw weeks away (and retention would then delete them), so the run ends."""


def _is_corrupt(exc: BaseException) -> bool:
    return isinstance(exc, _CORRUPT) and not isinstance(
        exc, (StoreUnavailable, torch.OutOfMemoryError))


def restore(state: TrainState, rank: int, world: int,
            on_wait: Callable[[float], None] = lambda _s: None) -> str | None:
    """Loads the newest committed checkpoint every rank can use (a collective). Returns its path,
    or None when the run has no committed checkpoint at all (the only fresh start)."""
    cfg = state.cfg
    storage = storage_for(cfg)
    grace = cfg.checkpoint.store_grace_minutes * 60
    device = state.device

    def listing() -> list[str]:  # rank 0's, broadcast: all try the same ones in the same order
        return [path for _, path in reversed(storage.list_checkpoints())] if rank == 0 else []

    candidates = broadcast_state(agree_with_retry(
        listing, StoreWait("list the checkpoints", grace, on_wait), device), 0, device)
    skipped: list[str] = []
    last_error = ""
    for path in candidates:
        try:
            loaded = agree_with_retry(
                lambda path=path: load_checkpoint(storage, path, state, rank, world),
                StoreWait(f"read {path}", grace, on_wait), device, is_bad=_is_corrupt)
            loaded.saved = broadcast_state(loaded.saved, 0, device)
            agree_with_retry(lambda loaded=loaded: apply_checkpoint(state, loaded, rank),
                             StoreWait(f"apply {path}", grace, on_wait), device,
                             is_bad=_is_corrupt)
        except Unusable as exc:
            log.error("rank %d: checkpoint %s is unusable (%s): every rank tries the next older "
                      "one", rank, path, exc)
            skipped.append(path)
            last_error = str(exc.__cause__ or exc)
            continue
        if rank == 0:
            for bad in skipped:  # the run writes these steps again: they must not count
                log.error("un-committing unusable checkpoint %s (its files stay)", bad)
                wait_for_store(lambda bad=bad: storage.uncommit(bad),
                               StoreWait(f"un-commit {bad}", grace, on_wait))
        return path
    if candidates:
        raise NoUsableCheckpoint(
            f"none of the {len(candidates)} committed checkpoint(s) of run "
            f"{cfg.checkpoint.run_name!r} in {storage.display} can be loaded (newest: "
            f"{candidates[0]}); not starting again from step 0. Inspect them, or start a new "
            f"run with another checkpoint.run_name. Last error: {last_error[:600]}")
    return None
