"""What a checkpoint's files are named, and how each is written atomically and safely loaded.

A never-ending run is stopped by preemptions, crashes and redeploys far more often than by its
user, so a checkpoint must be complete (resume as if nothing happened), never half-written (the
newest one is the one most likely to be read after a crash), and never able to run code when
loaded (`weights_only=True`: checkpoints travel between machines and users).

Layout of a run's checkpoints (written by `services.trainer.checkpoint_writer`, listed, kept and
deleted by `services.storage.RunStorage`, on a local folder or S3 alike):

    <run>/step_000000000500/state.pt
    <run>/step_000000000500/commit.json   the commit marker, written after every other file
    <run>/step_000000001000/...
    <run>/latest                       text file naming the newest directory, written last

A step folder is a checkpoint only once its commit marker is there: every rank stores its files
one by one, in no fixed order, so a crash can leave any subset of them, `state.pt` included.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

STATE_FILE = "state.pt"
META_FILE = "meta.json"
COMMIT_FILE = "commit.json"
LATEST_FILE = "latest"
#: The "format" the trainer writes in meta.json, commit.json and each rank's file.
COMMIT_FORMAT = 2
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    """Zero-padded so that names sort like steps in any listing (S3 included)."""
    return f"step_{step:012d}"


def parse_step_dir(name: str) -> int | None:
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def parse_json(data: bytes) -> dict[str, Any] | None:
    """A JSON object, or None for anything else (a file cut short by a crash included)."""
    try:
        value = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # platforms without directory fds
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Writes to a temporary name in the same directory, fsyncs, then renames over `path`.

    A reader (or a process restarted after a crash) sees the old file or the new one, never
    half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(data))


def save_state(state: Mapping[str, Any], path: str | Path) -> Path:
    """Saves a state dict atomically with torch.save."""
    path = Path(path)
    _atomic_write(path, lambda handle: torch.save(dict(state), handle))
    return path


class CheckpointLoadError(RuntimeError):
    """A checkpoint is missing, truncated, or holds something other than plain tensors/data."""


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads with `weights_only=True`: a checkpoint must never be able to run code."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise CheckpointLoadError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointLoadError(f"cannot load checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointLoadError(f"{path} does not hold a state dict")
    return state
