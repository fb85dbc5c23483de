"""Finding and copying checkpoints while retention deletes them; clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.evaluator import (
    BadCheckpointError,
    BadInputError,
    CheckpointVanishedError,
    NoCheckpointError,
    StoreError,
)
from services.evaluator.checkpoints import (
    CheckpointRef,
    copy_checkpoint,
    list_refs,
    load_checkpoint,
    resolve_checkpoint,
)
from services.storage import RunStorage, resolve_storage
from tests.services.evaluator_helpers import (
    TrappedFS,
    remove_checkpoint,
    tiny_config,
    write_checkpoint,
)


@pytest.fixture
def store(tmp_path: Path) -> RunStorage:
    cfg = tiny_config(tmp_path / "ckpt", tmp_path / "data")
    for step in (10, 20, 30):
        write_checkpoint(cfg, step)
    return resolve_storage(str(tmp_path / "ckpt"), "r1")


def test_latest_step_and_path(store: RunStorage, tmp_path: Path) -> None:
    assert resolve_checkpoint("latest", store).step == 30
    assert resolve_checkpoint("20", store).step == 20
    folder = tmp_path / "ckpt" / "r1" / "step_000000000010"
    by_folder = resolve_checkpoint(str(folder), None)
    by_file = resolve_checkpoint(str(folder / "state.pt"), None)
    assert by_folder.step == by_file.step == 10 and by_folder.path == by_file.path
    loaded = load_checkpoint(by_file)
    assert (loaded.step, loaded.images_seen, loaded.run) == (10, 160, "r1")
    assert loaded.meta["step"] == 10


def test_missing_things_are_named(store: RunStorage, tmp_path: Path) -> None:
    with pytest.raises(NoCheckpointError, match=r"no checkpoint of step 25 in .*r1; there are "
                                                r"steps 10, 20, 30"):
        resolve_checkpoint("25", store)
    empty = resolve_storage(str(tmp_path / "ckpt"), "nobody")
    with pytest.raises(NoCheckpointError, match="no checkpoint yet for run 'nobody'"):
        resolve_checkpoint("latest", empty)
    with pytest.raises(BadInputError, match=r"no checkpoint at .*nowhere: not found"):
        resolve_checkpoint(str(tmp_path / "nowhere"), None)
    (tmp_path / "hollow").mkdir()
    with pytest.raises(BadInputError, match=r"hollow: the folder has no state.pt"):
        resolve_checkpoint(str(tmp_path / "hollow"), None)


def test_corrupt_and_foreign_checkpoints(store: RunStorage, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt" / "r1" / "step_000000000020"
    state = folder / "state.pt"
    state.write_bytes(state.read_bytes()[: 2000])  # truncated by a crash mid-copy
    with pytest.raises(BadCheckpointError) as info:
        load_checkpoint(resolve_checkpoint("20", store))
    message = str(info.value)
    assert "checkpoint step 20" in message and "corrupt or truncated" in message
    assert str(folder) in message and "seer-eval-" not in message  # the store, not the copy

    import torch

    torch.save({"weights": torch.zeros(2)}, state)
    with pytest.raises(BadCheckpointError, match="is not a seer checkpoint: no 'model' entry"):
        load_checkpoint(resolve_checkpoint("20", store))


def test_a_checkpoint_deleted_before_the_copy_is_vanished(store: RunStorage,
                                                          tmp_path: Path) -> None:
    fs = TrappedFS(on_open=remove_checkpoint)
    trapped = RunStorage(fs, store.root, store.run_name, store.display)
    ref = list_refs(trapped)[-1]
    with pytest.raises(CheckpointVanishedError,
                       match=r"checkpoint step 30 .* vanished while being read \(retention\?\)"):
        copy_checkpoint(ref, tmp_path)
    assert not (tmp_path / "ckpt" / "r1" / "step_000000000030").exists()


def test_deleted_mid_read(store: RunStorage, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A local file stays readable once open (the copy completes); an S3-like stream fails
    mid-way, and then the missing object makes it a vanished checkpoint, not a corrupt one."""
    monkeypatch.setattr("services.evaluator.checkpoints.COPY_CHUNK_BYTES", 1024)
    keeps_reading = TrappedFS(on_read=lambda path: remove_checkpoint(path) or False)
    ref = list_refs(RunStorage(keeps_reading, store.root, "r1", store.display))[-1]
    (tmp_path / "a").mkdir()
    copy = copy_checkpoint(ref, tmp_path / "a")
    assert copy.stat().st_size > 2048
    assert not Path(ref.path).exists()

    cut_off = TrappedFS(on_read=lambda path: remove_checkpoint(path) or True)
    ref = list_refs(RunStorage(cut_off, store.root, "r1", store.display))[-1]
    assert ref.step == 20
    with pytest.raises(CheckpointVanishedError, match="step 20"):
        load_checkpoint(ref)

    # the same failure while the checkpoint is still there is a store error (retried), not
    # a vanished or corrupt checkpoint
    flaky = TrappedFS(on_read=lambda path: True)
    ref = CheckpointRef(flaky, str(Path(store.run_path) / "step_000000000010"), "x", 10)
    with pytest.raises(StoreError, match="connection reset"):
        load_checkpoint(ref)
