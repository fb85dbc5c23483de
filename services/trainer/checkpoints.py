"""Writing checkpoints through `ray.train.report`, committing them, and restoring one on all ranks.

One checkpoint is the folder `<storage>/<run>/step_<N>/`:

- `state.pt` (rank 0): what the ranks share: model, optimizer, schedule, scaler, step, config;
- `meta.json` (rank 0): a summary for `seer status` (step, loss, LR, world size, format 2);
- `rank_<r>.pt` (every rank): what rank r owns: its SwAV queue and its random streams (torch,
  CUDA, python, numpy, and the photometric generator). Restoring rank 0's on every rank made
  all ranks draw the same augmentations after a resume;
- `commit.json` (rank 0, last): the commit marker, with the world size and queue geometry.

Why a marker: Ray Train copies every rank's files into the store itself, file by file (pyarrow
`copy_files`: threads on a local folder, listing order on S3), so the presence of `state.pt`
says nothing about the rest; a crash leaves any subset, even half a file. Ray 2.60's `report`
in its default SYNC mode returns only once *this rank's* copy is done
(ray/train/v2/_internal/execution/context.py: `report` -> `_upload_checkpoint` ->
`StorageContext.persist_current_checkpoint`), so after `report` all ranks meet in a collective
and then rank 0 writes the marker, moves the `latest` pointer and prunes the folders crashes
left behind (`RunStorage.prune`).

Resume (`restore`): rank 0 lists the committed checkpoints and broadcasts the list; every rank
tries the newest, and a MIN all-reduce of the success flags tells all of them whether every rank
could read it; if one could not (a transient storage error on one node), all move to the next
candidate together, so that no two replicas ever start from different steps. With another
world size, the saved queues are dealt out over the new ranks (`queue_picks`) and a rank that
has no saved streams gets fresh ones (`seed_rank_streams`).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from seer_core.checkpoint import (
    COMMIT_FILE,
    COMMIT_FORMAT,
    STATE_FILE,
    CheckpointLoadError,
    load_state,
    save_state,
    step_dir_name,
)
from seer_core.config import SeerConfig
from seer_core.swav.queue import gather_queue_rows, queue_picks
from seer_core.training import StepResult, TrainState, load_state_dict, state_dict
from seer_core.training.saved import load_rank_state_dict, rank_state_dict, seed_rank_streams
from services.storage import META_FILE, RunStorage, resolve_storage

log = logging.getLogger("seer.trainer")
_LEGACY_QUEUE = re.compile(r"^queue_rank(\d{5})\.pt$")
#: What makes a checkpoint unusable on one rank (and so, after the vote, on all of them).
_UNREADABLE = (CheckpointLoadError, OSError, ValueError, KeyError, TypeError)


def storage_for(cfg: SeerConfig) -> RunStorage:
    return resolve_storage(cfg.checkpoint.storage, cfg.checkpoint.run_name,
                           cfg.checkpoint.endpoint_url)


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def legacy_queue_file(rank: int) -> str:
    """Where checkpoints written before per-rank streams held each rank's queue."""
    return f"queue_rank{rank:05d}.pt"


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_ranks_agree(ok: bool, world: int, device: torch.device | str = "cpu") -> bool:
    """True only when `ok` is True on every rank (a MIN all-reduce); a collective: every rank
    calls it equally often. Also the barrier after a checkpoint's copy."""
    if world <= 1 or not (dist.is_available() and dist.is_initialized()):
        return ok
    on = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=on)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def write_checkpoint_files(state: TrainState, rank: int, world: int, folder: Path,
                           metrics: Mapping[str, Any]) -> None:
    """This rank's files of a checkpoint, into a local folder (which Ray then copies)."""
    if rank == 0:
        save_state(state_dict(state, per_rank=False), folder / STATE_FILE)
        meta = {**metrics, "time": time.time(), "run_name": state.cfg.checkpoint.run_name,
                "world_size": world, "format": COMMIT_FORMAT}
        (folder / META_FILE).write_text(json.dumps(meta))
    own = {"format": COMMIT_FORMAT, "rank": rank, "world_size": world, "step": state.step,
           "queue": state.queue.state_dict() if state.queue is not None else None,
           **rank_state_dict(state)}
    save_state(own, folder / rank_file(rank))


def report_checkpoint(state: TrainState, rank: int, result: StepResult | None,
                      extra: Mapping[str, float] | None = None) -> None:
    """Every rank calls this together: rank 0 writes the shared state, each rank its own file;
    once every rank's copy is stored, rank 0 commits the checkpoint (see the module doc)."""
    import ray.train

    world = _world()
    metrics = {
        "step": state.step,
        "images_seen": state.images_seen,
        "loss": result.loss if result else float("nan"),
        "lr": result.lr if result else state.schedule.lr,
        **(extra or {}),
    }
    storage = storage_for(state.cfg)
    name = step_dir_name(state.step)
    path = f"{storage.run_path}/{name}"
    if rank == 0:
        # A folder of this step left by an earlier attempt is written over now; it must not
        # count as committed while that happens. Safe before `report`: Ray's copy starts only
        # after every rank has entered it (its first step syncs the folder name across ranks).
        _best_effort("un-commit", path, lambda: storage.uncommit(path))
    with tempfile.TemporaryDirectory(prefix="seer-ckpt-") as tmp:
        write_checkpoint_files(state, rank, world, Path(tmp), metrics)
        # SYNC (the default, spelt out because the commit depends on it): report returns once
        # this rank's files are in the store.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=name,
                         checkpoint_upload_mode=ray.train.CheckpointUploadMode.SYNC)
    all_ranks_agree(True, world, state.device)  # every rank's copy has returned
    if rank == 0:
        commit_checkpoint(storage, path, state, world)


def commit_checkpoint(storage: RunStorage, path: str, state: TrainState, world: int) -> None:
    """Marker, then `latest`, then pruning. A failure is logged, not raised: training goes on,
    and an uncommitted folder is only a checkpoint lost (the next one will be committed)."""
    queue = state.queue
    record = {"format": COMMIT_FORMAT, "step": state.step, "world_size": world,
              "queue_rows": queue.length if queue is not None else 0,
              "queue_filled": queue.filled if queue is not None else 0, "time": time.time()}
    if not _best_effort("commit", path, lambda: storage.commit(path, record)):
        return
    name = path.rsplit("/", 1)[-1]
    _best_effort("point latest at", path, lambda: storage.write_latest(name))
    removed: list[str] = []
    _best_effort("prune beside", path,
                 lambda: removed.extend(storage.prune(state.cfg.checkpoint.keep)))
    for gone in removed:
        log.info("pruned %s (left by a crash, or beyond checkpoint.keep and not Ray's)", gone)


def _best_effort(what: str, path: str, action: Callable[[], object]) -> bool:
    try:
        action()
    except OSError as exc:
        log.error("could not %s checkpoint %s: %s", what, path, exc)
        return False
    return True


def checkpoints_newest_first(storage: RunStorage, rank: int, world: int) -> list[str]:
    """Committed checkpoints in the run's storage, newest first, as rank 0 sees them.

    Not `ray.train.get_checkpoint()`: Ray hands a restarted group the newest checkpoint its
    controller has *registered*, and a worker killed moments after reporting leaves a complete,
    newer checkpoint that was never registered (seen in tests). Ray writes into this same
    storage, so the listing covers its checkpoints too, and nothing written is thrown away.
    Rank 0 lists and broadcasts so that every rank tries the same candidates in the same order.
    """
    choice: list[list[str]] = [[]]
    if rank == 0:
        choice[0] = [path for _, path in reversed(storage.list_checkpoints())]
    if world > 1:
        dist.broadcast_object_list(choice, src=0)
    return choice[0]


@dataclass
class LoadedCheckpoint:
    """What one rank read of a candidate checkpoint, not yet applied to its state."""

    path: str
    saved: dict[str, Any]
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
        while chunk := stream.read(8 * 1024 * 1024):
            out.write(chunk)
    try:
        return load_state(local, map_location="cpu")
    finally:
        local.unlink(missing_ok=True)


def load_checkpoint(storage: RunStorage, path: str, state: TrainState, rank: int,
                    world: int) -> LoadedCheckpoint:
    """Reads what this rank needs of a checkpoint; raises one of `_UNREADABLE` if it cannot.

    Committed checkpoints name their world size and queue geometry; legacy ones (no marker)
    held rank 0's queue and streams in state.pt and every rank's queue in `queue_rank<r>.pt`.
    """
    names = storage.folder_files(path)
    notes: list[str] = []
    parts: dict[int, dict[str, Any] | None] = {}
    with tempfile.TemporaryDirectory(prefix="seer-restore-") as tmp_name:
        tmp = Path(tmp_name)
        saved = _read(storage, path, STATE_FILE, tmp)
        if COMMIT_FILE in names:
            commit = storage.read_commit(path)
            old_world = int(commit["world_size"])
            old_rows, old_filled = int(commit["queue_rows"]), int(commit["queue_filled"])
            missing = [rank_file(r) for r in range(old_world) if rank_file(r) not in names]
            if missing:
                raise CheckpointLoadError(f"{path} is committed but lacks {missing}")

            def old_rank(r: int) -> dict[str, Any] | None:
                if r not in parts:
                    parts[r] = _read(storage, path, rank_file(r), tmp)
                return parts[r]
        else:
            queue_files = {int(m.group(1)) for m in map(_LEGACY_QUEUE.match, names) if m}
            old_world = max(queue_files) + 1 if queue_files else 1
            old_length = int(((saved.get("config") or {}).get("swav") or {}).get(
                "queue_length") or 0)
            old_rows = old_filled = old_length // old_world  # fills: read from the files
            notes.append(f"legacy checkpoint (no {COMMIT_FILE}) of {old_world} rank(s)")

            def old_rank(r: int) -> dict[str, Any] | None:
                if r not in parts:
                    queue = (_read(storage, path, legacy_queue_file(r), tmp)
                             if r in queue_files else saved.get("queue") if r == 0 else None)
                    streams = ({"rng": saved.get("rng"), "generator": saved.get("generator")}
                               if r == 0 else {})
                    parts[r] = {"queue": queue, **streams}
                return parts[r]

        own = old_rank(rank) if rank < old_world else None
        streams = own if own is not None and own.get("rng") is not None else None
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


def restore(state: TrainState, rank: int, world: int) -> str | None:
    """Loads the newest checkpoint that every rank can read; all ranks load the same one.

    A candidate unreadable on any rank (cut short, corrupt, a storage error on one node) is
    skipped by all ranks together, with an error logged. Returns its path, or None for a fresh
    start (no checkpoint, or none readable everywhere). Every rank calls this together.
    """
    storage = storage_for(state.cfg)
    for path in checkpoints_newest_first(storage, rank, world):
        loaded: LoadedCheckpoint | None = None
        try:
            loaded = load_checkpoint(storage, path, state, rank, world)
        except _UNREADABLE as exc:
            log.error("rank %d: cannot read checkpoint %s: %s", rank, path, exc)
        if not all_ranks_agree(loaded is not None, world, state.device):
            if loaded is not None:
                log.error("rank %d: checkpoint %s is unreadable on another rank: every rank "
                          "tries an older one", rank, path)
            continue
        assert loaded is not None
        apply_checkpoint(state, loaded, rank)
        return path
    return None
