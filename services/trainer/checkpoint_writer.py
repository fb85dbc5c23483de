"""Saving a checkpoint beside training: the step loop pays only for a copy into host memory.

One checkpoint, `<run>/step_<N>/`, goes through three stages:

1. **snapshot** (training thread, every rank at the same step): this rank's part of the state
   is copied into host memory (`host_copy`), the loop's only pause.
2. **upload** (a background thread per rank): the copy is serialised to a local temporary
   folder and each file stored all or nothing (`RunStorage.store_file`), waiting out store
   errors (`StoreWait`).
3. **commit** (rank 0, background, after *every* rank's upload): `commit.json`, then `latest`,
   then retention. Until the marker is there the folder is not a checkpoint, so a crash at any
   point leaves the newest committed checkpoint intact.

While a checkpoint is in flight, ranks learn that every upload is done through a tiny
all-reduce per step (`poll`; every rank started it at the same step, so all call it equally
often). One checkpoint is in flight at a time, which bounds host memory to one copy.

Deletion has one owner: rank 0, after a commit (`RunStorage.prune`). Ray Train never sees these
checkpoints (no `checkpoint=` in `ray.train.report`): its retention orders checkpoints by
registration, so a rewound run would delete the newest ones, and it deleted before seer committed.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seer_core.checkpoint import COMMIT_FORMAT, STATE_FILE, save_state, step_dir_name
from seer_core.training import TrainState, state_dict
from seer_core.training.saved import rank_state_dict
from services.storage import META_FILE, RunStorage
from services.trainer.collective import StoreWait, map_leaves, wait_for_store, worst

log = logging.getLogger("seer.trainer")

#: An upload's state on one rank; the group's is the worst (MAX) of them.
DONE, PENDING, FAILED = 0, 1, 2


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def host_copy(value: Any) -> Any:
    """A deep copy whose tensors live in host memory and no longer alias the training state
    (the optimizer keeps updating its tensors in place while the upload runs)."""
    return map_leaves(value, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))


def snapshot(state: TrainState, rank: int, world: int,
             metrics: Mapping[str, Any]) -> dict[str, Any]:
    """This rank's files of a checkpoint, as host-memory objects: name -> content."""
    files: dict[str, Any] = {}
    if rank == 0:
        files[STATE_FILE] = host_copy(state_dict(state, per_rank=False))
        files[META_FILE] = {**metrics, "time": time.time(),
                            "run_name": state.cfg.checkpoint.run_name,
                            "world_size": world, "format": COMMIT_FORMAT}
    files[rank_file(rank)] = host_copy({
        "format": COMMIT_FORMAT, "rank": rank, "world_size": world, "step": state.step,
        "queue": state.queue.state_dict() if state.queue is not None else None,
        **rank_state_dict(state)})
    return files


def write_files(files: Mapping[str, Any], folder: Path) -> list[Path]:
    """Serialises a snapshot into a local folder (torch.save; meta.json as JSON)."""
    paths = []
    for name, content in files.items():
        path = folder / name
        if name == META_FILE:
            path.write_text(json.dumps(content))
        else:
            save_state(content, path)
        paths.append(path)
    return paths


@dataclass
class InFlight:
    step: int
    path: str
    record: dict[str, Any]
    upload: Future[None]


class CheckpointWriter:
    """One rank's checkpoint pipeline (see the module doc). Every rank creates one."""

    def __init__(self, storage: RunStorage, rank: int, world: int, device: torch.device,
                 keep: int, grace_s: float,
                 on_wait: Callable[[float], None] = lambda _s: None,
                 on_commit: Callable[[int], None] = lambda _step: None) -> None:
        self.storage, self.rank, self.world, self.device = storage, rank, world, device
        self.keep, self.grace_s = keep, grace_s
        self.on_wait, self.on_commit = on_wait, on_commit
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"seer-ckpt-{rank}")
        self.in_flight: InFlight | None = None
        self.committing: Future[None] | None = None
        self.committed_step = -1

    # -- training thread --------------------------------------------------------------------
    def start(self, state: TrainState, metrics: Mapping[str, Any]) -> float:
        """Begins a checkpoint of the current step on this rank (every rank calls it at the same
        step); returns the seconds the loop paused (the previous checkpoint's wait included)."""
        began = time.perf_counter()
        self.finish()
        files = snapshot(state, self.rank, self.world, metrics)
        path = f"{self.storage.run_path}/{step_dir_name(state.step)}"
        queue = state.queue
        record = {"format": COMMIT_FORMAT, "step": state.step, "world_size": self.world,
                  "queue_rows": queue.length if queue is not None else 0,
                  "queue_filled": queue.filled if queue is not None else 0}
        upload = self.pool.submit(self._upload, files, path)
        self.in_flight = InFlight(state.step, path, record, upload)
        return time.perf_counter() - began

    def poll(self) -> None:
        """Once per step: commits the checkpoint in flight once every rank has uploaded it (a
        collective while one is in flight, nothing otherwise)."""
        if self.in_flight is not None:
            self._settle(block=False)

    def finish(self) -> None:
        """Blocks until the checkpoint in flight is uploaded everywhere and committed (before a
        new one, and before the loop returns): a stop always ends with a committed state."""
        if self.in_flight is not None:
            self._settle(block=True)
        if self.committing is not None:
            self.committing.result()  # rank 0: a commit that gave up raises here
            self.committing = None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _settle(self, block: bool) -> None:
        flight = self.in_flight
        assert flight is not None
        if block:
            flight.upload.exception()  # waits; the error is read below
        mine = PENDING
        if flight.upload.done():
            mine = FAILED if flight.upload.exception() is not None else DONE
        group = worst(mine, self.device)
        if group == FAILED:
            self.in_flight = None
            error = flight.upload.exception()
            if error is not None:
                raise error
            raise RuntimeError(f"checkpoint {flight.path}: the upload failed on another rank")
        if group == PENDING:  # never after `block`: every rank waited for its own upload
            return
        self.in_flight = None
        if self.rank == 0:
            self.committing = self.pool.submit(self._commit, flight)

    # -- background thread ------------------------------------------------------------------
    def _upload(self, files: Mapping[str, Any], path: str) -> None:
        with tempfile.TemporaryDirectory(prefix="seer-ckpt-") as tmp:
            for local in write_files(files, Path(tmp)):
                wait = StoreWait(f"upload {path}/{local.name}", self.grace_s, self.on_wait)
                wait_for_store(lambda local=local: self.storage.store_file(
                    local, f"{path}/{local.name}"), wait)

    def _commit(self, flight: InFlight) -> None:
        record = {**flight.record, "time": time.time()}
        wait = StoreWait(f"commit {flight.path}", self.grace_s, self.on_wait)
        wait_for_store(lambda: self.storage.commit(flight.path, record), wait)
        self.committed_step = flight.step
        self.on_commit(flight.step)
        try:
            self.storage.write_latest(flight.path.rsplit("/", 1)[-1])
            removed = self.storage.prune(self.keep)
        except OSError as exc:  # a hint and a clean-up: the next commit tries again
            log.warning("after committing %s: %s", flight.path, exc)
            return
        for gone in removed:
            log.info("pruned %s", gone)

