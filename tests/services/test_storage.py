"""Resolving the checkpoint store and listing what is complete in it."""

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from services.storage import resolve_storage, s3_endpoint


def test_local_storage_lists_committed_checkpoints_only(tmp_path: Path) -> None:
    """A step folder counts once its commit.json is there, whatever else it holds: state.pt
    alone may be a copy cut short, and state.pt + meta.json (no marker) is an upload whose
    commit never came, not an older layout (see test_checkpoint_commit.py)."""
    storage = resolve_storage(str(tmp_path), "run")
    assert storage.list_checkpoints() == []
    for step, files in ((3, ("state.pt", "commit.json")), (10, ("state.pt", "meta.json")),
                        (12, ("state.pt",)), (13, ())):
        folder = tmp_path / "run" / f"step_{step:012d}"
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).write_bytes(b"{}" if name.endswith(".json") else b"x")
    (tmp_path / "run" / "latest").write_text("step_000000000010\n")  # a hint, not a checkpoint
    assert storage.list_checkpoints() == [(3, str(tmp_path / "run" / "step_000000000003"))]
    assert storage.read_meta(storage.list_checkpoints()[0][1]) == {}


def test_s3_storage_uses_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = resolve_storage("s3://bucket/some/prefix", "run", "http://127.0.0.1:9")
    assert isinstance(storage.filesystem, pafs.S3FileSystem)
    assert storage.run_path == "bucket/some/prefix/run"
    assert storage.display == "s3://bucket/some/prefix/run"


def test_bad_storage_uris() -> None:
    with pytest.raises(ValueError, match="has no bucket"):
        resolve_storage("s3:///x", "run")
    with pytest.raises(ValueError, match="unsupported scheme"):
        resolve_storage("gs://bucket/x", "run")


def test_endpoint_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert s3_endpoint(None) is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert s3_endpoint(None) == "http://127.0.0.1:1"
    assert s3_endpoint("http://127.0.0.1:2") == "http://127.0.0.1:2"
