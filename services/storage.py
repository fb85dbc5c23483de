"""Where a run's checkpoints live: a local folder or an S3 prefix, seen through pyarrow.fs.

Ray Train persists checkpoints through a `pyarrow.fs.FileSystem`; resolving the configured
location here, once, gives the trainer and `seer status` the very same view of the store (an S3
endpoint such as MinIO is passed explicitly rather than trusted to `AWS_ENDPOINT_URL`, which
pyarrow and boto3 do not read alike). Credentials are never part of the config: pyarrow reads
them from the environment or the standard AWS chain.

Layout, as Ray Train writes it: `<storage>/<run_name>/step_000000000500/{state.pt,meta.json}`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from seer_core.checkpoint import parse_step_dir

META_FILE = "meta.json"
ENDPOINT_ENV = ("SEER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def s3_endpoint(configured: str | None) -> str | None:
    """The configured endpoint, else the first endpoint variable set in the environment."""
    if configured:
        return configured
    for name in ENDPOINT_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


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

    def list_checkpoints(self) -> list[tuple[int, str]]:
        """(step, path) of complete checkpoints (those with a state file), oldest first."""
        selector = pafs.FileSelector(self.run_path, allow_not_found=True)
        found = []
        for info in self.filesystem.get_file_info(selector):
            if info.type != pafs.FileType.Directory:
                continue
            step = parse_step_dir(info.base_name)
            if step is None:
                continue
            state = self.filesystem.get_file_info(f"{info.path}/state.pt")
            if state.type == pafs.FileType.File:
                found.append((step, info.path))
        return sorted(found)

    def read_meta(self, checkpoint_path: str) -> dict[str, Any]:
        """The small JSON summary written beside each checkpoint (step, loss, LR...)."""
        try:
            with self.filesystem.open_input_stream(f"{checkpoint_path}/{META_FILE}") as handle:
                return json.loads(handle.read().decode())
        except (FileNotFoundError, OSError, ValueError):
            return {}


def resolve_storage(storage: str, run_name: str, endpoint_url: str | None = None) -> RunStorage:
    """Maps `checkpoint.storage` (a folder or s3://bucket/prefix) to a pyarrow filesystem."""
    parsed = urlparse(storage)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"checkpoint.storage: {storage!r} has no bucket (s3://bucket/prefix)")
        endpoint = s3_endpoint(endpoint_url)
        kwargs: dict[str, Any] = {}
        if endpoint:
            ep = urlparse(endpoint)
            kwargs["endpoint_override"] = ep.netloc or ep.path
            kwargs["scheme"] = ep.scheme or "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        fs = pafs.S3FileSystem(**kwargs)
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
