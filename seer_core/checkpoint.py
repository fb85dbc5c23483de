"""What a checkpoint holds on disk, how it is written atomically, kept, listed and safely loaded.

A never-ending run is stopped by preemptions, crashes and redeploys far more often than by its
user, so a checkpoint must be complete (resume as if nothing happened), never half-written (the
newest one is the one most likely to be read after a crash), and never able to run code when
loaded (`weights_only=True`: checkpoints travel between machines and users).

Layout of a checkpoint store (the same names Ray Train uses for a run's checkpoints, so
`seer status` and the evaluator read both):

    <root>/step_000000000500/state.pt
    <root>/step_000000000500/commit.json   the commit marker, written after every other file
    <root>/step_000000001000/...
    <root>/latest                       text file naming the newest directory, written last

A step folder is a checkpoint only once its commit marker is there: under Ray Train the files of
a checkpoint are copied into the store one by one (by every rank, in no fixed order), so a
crash can leave any subset of them, `state.pt` included, even half of one. Folders written
before commit markers existed ("legacy": `state.pt` and a `meta.json` without a `format`)
still count, because upgrading a weeks-long run must not make it forget its checkpoints; a
new-format folder says `"format": 2` in its `meta.json` and is never taken for a legacy one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

STATE_FILE = "state.pt"
META_FILE = "meta.json"
COMMIT_FILE = "commit.json"
LATEST_FILE = "latest"
#: `meta.json`'s "format" from which a checkpoint needs its commit marker to count.
COMMIT_FORMAT = 2
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    """Zero-padded so that names sort like steps in any listing (S3 included)."""
    return f"step_{step:012d}"


def parse_step_dir(name: str) -> int | None:
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def is_complete(names: Collection[str],
                read_meta: Callable[[], Mapping[str, Any] | None]) -> bool:
    """Whether a step folder holding the files `names` is a checkpoint one may load.

    Committed (the marker is there), or legacy: `state.pt` and a `meta.json` that parses and
    has no `format` of `COMMIT_FORMAT` or more. `read_meta` is only called in that last case
    (it costs a read on S3), and returns None when meta.json cannot be read or parsed.
    """
    if COMMIT_FILE in names:
        return True
    if STATE_FILE not in names or META_FILE not in names:
        return False
    meta = read_meta()
    if not isinstance(meta, Mapping):
        return False
    try:
        return int(meta.get("format", 1)) < COMMIT_FORMAT
    except (TypeError, ValueError):
        return False


def parse_json(data: bytes) -> dict[str, Any] | None:
    """A JSON object, or None for anything else (a file cut short by a crash included)."""
    try:
        value = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
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


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path


class CheckpointStore:
    """A folder of step-named checkpoints with retention and a `latest` pointer.

    Used when seer_core runs without Ray (benchmarks, notebooks, the evaluator's local cache);
    under Ray Train the same layout is produced by `ray.train.report` with step-named
    directories, and read back with `list()`/`latest()` here.
    """

    def __init__(self, root: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep: {keep} must be >= 1")
        self.root = Path(root)
        self.keep = keep

    def list(self) -> list[CheckpointInfo]:
        """Complete checkpoints (committed or legacy: `is_complete`), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            step = parse_step_dir(child.name)
            if step is not None and _complete_folder(child):
                found.append(CheckpointInfo(step, child))
        return sorted(found, key=lambda info: info.step)

    def latest(self) -> CheckpointInfo | None:
        """The pointer's target when it is valid, else the newest complete checkpoint."""
        pointer = self.root / LATEST_FILE
        if pointer.is_file():
            name = pointer.read_text().strip()
            step = parse_step_dir(name)
            if step is not None and _complete_folder(self.root / name):
                return CheckpointInfo(step, self.root / name)
        items = self.list()
        return items[-1] if items else None

    def save(self, state: Mapping[str, Any], step: int) -> CheckpointInfo:
        """Writes the checkpoint, its commit marker, moves `latest` to it, then drops all but
        the newest K."""
        directory = self.root / step_dir_name(step)
        save_state(state, directory / STATE_FILE)
        atomic_write_bytes(directory / COMMIT_FILE,
                           json.dumps({"format": COMMIT_FORMAT, "step": step}).encode())
        atomic_write_bytes(self.root / LATEST_FILE, (directory.name + "\n").encode())
        self.prune()
        return CheckpointInfo(step, directory)

    def prune(self) -> list[Path]:
        """Removes the oldest checkpoints beyond `keep`; never the one `latest` points at."""
        items = self.list()
        latest = self.latest()
        removed = []
        for info in items[: max(0, len(items) - self.keep)]:
            if latest is not None and info.path == latest.path:
                continue
            (info.path / COMMIT_FILE).unlink(missing_ok=True)  # no longer a checkpoint first
            shutil.rmtree(info.path, ignore_errors=True)
            removed.append(info.path)
        return removed


def _complete_folder(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return is_complete({p.name for p in folder.iterdir()},
                       lambda: _read_json(folder / META_FILE))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return parse_json(path.read_bytes())
    except OSError:
        return None
