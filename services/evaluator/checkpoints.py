"""Finding a checkpoint (latest, a step, a path) and reading it safely while retention runs.

The trainer keeps only the newest K checkpoints, so the one the evaluator picked may be deleted
while it is being read. The evaluator therefore first copies `state.pt` into a private
temporary folder through the store's pyarrow filesystem, and only then loads that copy:
once the copy is complete, retention can do what it likes. A checkpoint that disappears before
or during the copy is a `CheckpointVanishedError` (the watch loop retries at the next poll), not
a corrupt one. The copy lands in `$TMPDIR` (tempfile's rule) and is removed after loading.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from seer_core.checkpoint import (
    STATE_FILE,
    CheckpointLoadError,
    load_state,
    parse_json,
    parse_step_dir,
)
from services.evaluator import (
    BadCheckpointError,
    BadInputError,
    CheckpointVanishedError,
    NoCheckpointError,
    StoreError,
)
from services.storage import META_FILE, RunStorage, resolve_storage

COPY_CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint folder in some store; `step` comes from its name when it has one."""

    filesystem: Any  # a pyarrow.fs.FileSystem (or anything with the same methods, in tests)
    path: str
    display: str
    step: int | None = None

    def describe(self) -> str:
        return (f"checkpoint step {self.step} ({self.display})" if self.step is not None
                else f"checkpoint {self.display}")


@dataclass
class LoadedCheckpoint:
    """A checkpoint read into memory, with where it came from (for rows and messages)."""

    ref: CheckpointRef
    saved: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.saved.get("step", self.ref.step or 0))

    @property
    def images_seen(self) -> int:
        return int(self.saved.get("images_seen", self.meta.get("images_seen", 0)) or 0)

    @property
    def run(self) -> str:
        config = self.saved.get("config") or {}
        return str((config.get("checkpoint") or {}).get("run_name") or self.meta.get(
            "run_name", "unknown"))


def display_path(filesystem: Any, path: str) -> str:
    return f"s3://{path}" if getattr(filesystem, "type_name", "") == "s3" else path


def list_refs(storage: RunStorage) -> list[CheckpointRef]:
    """The run's complete checkpoints, oldest first."""
    try:
        found = storage.list_checkpoints()
    except OSError as exc:
        raise StoreError(f"cannot list checkpoints in {storage.display}: {exc}") from exc
    return [CheckpointRef(storage.filesystem, path, display_path(storage.filesystem, path), step)
            for step, path in found]


def _ref_from_path(spec: str, endpoint_url: str | None) -> CheckpointRef:
    """A folder holding state.pt, or a state.pt file; local or s3://bucket/key."""
    parsed = urlparse(spec)
    if parsed.scheme == "s3":
        storage = resolve_storage(f"s3://{parsed.netloc}", "", endpoint_url)
        fs, path = storage.filesystem, f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
    else:
        fs, path = pafs.LocalFileSystem(), os.path.abspath(parsed.path if parsed.scheme else spec)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            path = path.rsplit("/", 1)[0] if "/" in path else path
        elif info.type == pafs.FileType.Directory:
            if fs.get_file_info(f"{path}/{STATE_FILE}").type != pafs.FileType.File:
                raise BadInputError(f"no checkpoint at {display_path(fs, path)}: the folder has "
                                    f"no {STATE_FILE}")
        else:
            raise BadInputError(f"no checkpoint at {display_path(fs, path)}: not found (give a "
                                f"checkpoint folder, a {STATE_FILE} file, latest, or a step)")
    except OSError as exc:
        raise StoreError(f"cannot read {spec}: {exc}") from exc
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return CheckpointRef(fs, path, display_path(fs, path), parse_step_dir(name))


def resolve_checkpoint(spec: str, storage: RunStorage | None,
                       endpoint_url: str | None = None) -> CheckpointRef:
    """`latest`, a step number (both in `storage`), or a path (folder or state.pt)."""
    spec = spec.strip()
    is_path = "/" in spec or spec.endswith(".pt") or os.path.exists(spec)
    if not is_path and (spec == "latest" or spec.isdigit()):
        if storage is None:
            raise BadInputError(f"--checkpoint {spec}: needs a checkpoint store (--config/--set)")
        refs = list_refs(storage)
        if not refs:
            raise NoCheckpointError(f"no checkpoint yet for run {storage.run_name!r} in "
                                    f"{storage.display}")
        if spec == "latest":
            return refs[-1]
        found = next((r for r in refs if r.step == int(spec)), None)
        if found is None:
            raise NoCheckpointError(f"no checkpoint of step {int(spec)} in {storage.display}; "
                                    f"there are steps {', '.join(str(r.step) for r in refs)}")
        return found
    return _ref_from_path(spec, endpoint_url)


def _exists(filesystem: Any, path: str) -> bool:
    try:
        return filesystem.get_file_info(path).type == pafs.FileType.File
    except OSError:
        return False


def copy_checkpoint(ref: CheckpointRef, destination: Path) -> Path:
    """Copies state.pt into `destination`; returns the copy. A failure is `vanished` only when
    the file is gone afterwards (else the store failed: StoreError)."""
    source = f"{ref.path}/{STATE_FILE}"
    target = destination / STATE_FILE
    vanished = CheckpointVanishedError(
        f"{ref.describe()} vanished while being read (retention?); it is skipped")
    try:
        info = ref.filesystem.get_file_info(source)
        if info.type != pafs.FileType.File:
            raise vanished
        with ref.filesystem.open_input_stream(source) as stream, open(target, "wb") as out:
            shutil.copyfileobj(stream, out, COPY_CHUNK_BYTES)
            copied = out.tell()
    except OSError as exc:  # FileNotFoundError included
        if not _exists(ref.filesystem, source):
            raise vanished from exc
        raise StoreError(f"cannot read {ref.describe()}: {exc}") from exc
    if info.size is not None and copied != info.size:
        if not _exists(ref.filesystem, source):
            raise vanished
        raise StoreError(f"{ref.describe()}: copied {copied} of {info.size} bytes; it changed "
                         "while being read")
    return target


def load_checkpoint(ref: CheckpointRef) -> LoadedCheckpoint:
    """Copies the checkpoint to a private folder, then loads it (weights_only)."""
    with tempfile.TemporaryDirectory(prefix="seer-eval-") as tmp:
        local = copy_checkpoint(ref, Path(tmp))
        try:  # meta.json is a summary, best effort; state.pt holds the truth
            with ref.filesystem.open_input_stream(f"{ref.path}/{META_FILE}") as stream:
                meta = parse_json(stream.read()) or {}
        except OSError:
            meta = {}
        try:
            saved = load_state(local)
        except CheckpointLoadError as exc:
            message = str(exc).replace(str(local), f"{ref.display}/{STATE_FILE}")
            raise BadCheckpointError(
                f"{ref.describe()} is corrupt or truncated: {message}") from exc
    for key in ("model", "config"):
        if key not in saved:
            raise BadCheckpointError(f"{ref.describe()} is not a seer checkpoint: no {key!r} "
                                     f"entry (keys: {', '.join(sorted(map(str, saved)))})")
    return LoadedCheckpoint(ref, saved, meta)
