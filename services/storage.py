"""Where a run's checkpoints live: a local folder or an S3 prefix, seen through pyarrow.fs (as Ray
Train sees its run folder), resolved here once so that the trainer, `seer status` and the
evaluator see the very same store (the S3 filesystem comes from services.s3). Credentials are
never part of the config: pyarrow reads them from the environment or the AWS chain.

Layout (`services.trainer.checkpoint_writer`): `<storage>/<run_name>/step_000000000500/{state.pt,
meta.json,rank_00000.pt,...,commit.json}` and `<storage>/<run_name>/latest`. `scan` is the one
listing of a run's checkpoints: a step folder counts once its commit marker is there. It lives
here, not in `seer_core` (no ray, no boto3): pyarrow gives local folders and S3 the same code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from seer_core.checkpoint import (
    COMMIT_FILE,
    LATEST_FILE,
    META_FILE,
    atomic_write_bytes,
    parse_json,
    parse_step_dir,
)
from services.s3 import s3_endpoint, s3_filesystem

__all__ = ["META_FILE", "RunStorage", "StepFolder", "resolve_storage", "s3_endpoint"]

log = logging.getLogger("seer.storage")
_CHUNK = 8 * 1024 * 1024
_LISTING_ATTEMPTS = 3


@dataclass(frozen=True)
class StepFolder:
    """A step folder of a run as one listing saw it: which files it holds."""

    step: int
    path: str
    files: frozenset[str]

    @property
    def complete(self) -> bool:
        """A checkpoint (committed), as opposed to an upload in flight or cut short."""
        return COMMIT_FILE in self.files


@dataclass(frozen=True)
class RunStorage:
    """A run's checkpoint location: filesystem + path of the store root (without the run)."""

    filesystem: pafs.FileSystem
    root: str
    run_name: str
    display: str

    @property
    def run_path(self) -> str:
        return f"{self.root.rstrip('/')}/{self.run_name}"

    @property
    def is_local(self) -> bool:
        return getattr(self.filesystem, "type_name", "") == "local"

    def scan(self) -> list[StepFolder]:
        """Every step folder of the run with its files, oldest first: one recursive listing."""
        run = self.run_path.rstrip("/")
        for attempt in range(_LISTING_ATTEMPTS):
            try:
                infos = self.filesystem.get_file_info(
                    pafs.FileSelector(run, allow_not_found=True, recursive=True))
                break
            except FileNotFoundError:  # a folder deleted (retention) while it was walked
                if attempt == _LISTING_ATTEMPTS - 1:
                    raise
        files: dict[str, set[str]] = {}
        for info in infos:
            if not info.path.startswith(run + "/"):
                continue
            parts = info.path[len(run) + 1:].split("/")
            if parse_step_dir(parts[0]) is None:
                continue
            names = files.setdefault(parts[0], set())
            if len(parts) == 2 and info.type == pafs.FileType.File:
                names.add(parts[1])
        found = [StepFolder(parse_step_dir(name) or 0, f"{run}/{name}", frozenset(names))
                 for name, names in files.items()]
        return sorted(found, key=lambda folder: folder.step)

    def list_checkpoints(self) -> list[tuple[int, str]]:
        """(step, path) of the committed checkpoints, oldest first."""
        return [(folder.step, folder.path) for folder in self.scan() if folder.complete]

    def folder_files(self, path: str) -> set[str]:
        infos = self.filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return {info.base_name for info in infos if info.type == pafs.FileType.File}

    def read_bytes(self, path: str) -> bytes | None:
        """A file's bytes, or None when it is not there; a store error propagates."""
        try:
            with self.filesystem.open_input_stream(path) as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def read_json(self, path: str) -> dict[str, Any] | None:
        """A JSON object file, or None when it is missing or not an object (a write cut short);
        a store error propagates: an outage is not a missing file."""
        data = self.read_bytes(path)
        return None if data is None else parse_json(data)

    def read_meta(self, checkpoint_path: str) -> dict[str, Any]:
        """The JSON summary beside each checkpoint (step, loss, LR...); {} if none or unreadable:
        a summary is best effort, the checkpoint's state holds the truth."""
        try:
            return self.read_json(f"{checkpoint_path}/{META_FILE}") or {}
        except OSError:
            return {}

    def write_bytes(self, path: str, data: bytes) -> None:
        """All or nothing: locally a temporary file renamed over `path`; on S3 one PUT."""
        if self.is_local:
            atomic_write_bytes(path, data)
            return
        with self.filesystem.open_output_stream(path) as out:
            out.write(data)

    def commit(self, checkpoint_path: str, record: dict[str, Any]) -> None:
        """Writes the commit marker, once every file of the checkpoint is stored."""
        self.write_bytes(f"{checkpoint_path}/{COMMIT_FILE}", json.dumps(record).encode())

    def uncommit(self, checkpoint_path: str) -> None:
        """Removes a commit marker, if there is one (before a folder is written over)."""
        with contextlib.suppress(FileNotFoundError):
            self.filesystem.delete_file(f"{checkpoint_path}/{COMMIT_FILE}")

    def write_latest(self, name: str) -> None:
        """Points `<run>/latest` at a committed step folder (written after its marker)."""
        self.write_bytes(f"{self.run_path}/{LATEST_FILE}", (name + "\n").encode())

    def store_file(self, local: Path, path: str) -> None:
        """Stores a local file at `path`, all or nothing (as `write_bytes`)."""
        if self.is_local:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(local, tmp)
            os.replace(tmp, target)
            return
        with open(local, "rb") as source, self.filesystem.open_output_stream(path) as out:
            shutil.copyfileobj(source, out, _CHUNK)

    def prune(self, keep: int) -> list[str]:
        """Deletes what no run will read again (rank 0, after each commit; the only code that
        deletes checkpoints) and returns the deleted paths: committed checkpoints older than the
        newest `keep`, and incomplete folders older than the newest committed one (a run resumes
        from that and writes only newer steps; a newer incomplete folder may be an upload in
        flight)."""
        if keep < 2:
            raise ValueError(f"keep: {keep} must be >= 2")
        folders = self.scan()
        complete = [folder for folder in folders if folder.complete]
        if not complete:
            return []
        newest = complete[-1].step
        doomed = [f for f in folders if not f.complete and f.step < newest]
        doomed += complete[:-keep]
        removed = []
        for folder in sorted(doomed, key=lambda f: f.step):
            try:  # the marker first: no reader sees a checkpoint losing its files
                if folder.complete:
                    self.uncommit(folder.path)
                with contextlib.suppress(FileNotFoundError):
                    self.filesystem.delete_dir(folder.path)
            except OSError as exc:
                log.warning("could not prune %s: %s", folder.path, exc)
                continue
            removed.append(folder.path)
        return removed


def resolve_storage(storage: str, run_name: str, endpoint_url: str | None = None) -> RunStorage:
    """Maps `checkpoint.storage` (a folder or s3://bucket/prefix) to a pyarrow filesystem."""
    parsed = urlparse(storage)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"checkpoint.storage: {storage!r} has no bucket (s3://bucket/prefix)")
        fs = s3_filesystem(endpoint_url)
        root = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        return RunStorage(fs, root, run_name, f"s3://{root}/{run_name}")
    if parsed.scheme not in ("", "file"):
        raise ValueError(
            f"checkpoint.storage: {storage!r} has an unsupported scheme; allowed: a folder, "
            "file://..., s3://bucket/prefix"
        )
    path = os.path.abspath(parsed.path if parsed.scheme == "file" else storage)
    os.makedirs(path, exist_ok=True)
    return RunStorage(pafs.LocalFileSystem(), path, run_name, os.path.join(path, run_name))
