"""Checkpoint files: atomic, named to sort by step, loaded without running code.

Listing and retention are `services.storage.RunStorage`'s (tests/services/test_storage.py,
test_checkpoint_commit.py)."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from seer_core.checkpoint import CheckpointLoadError, load_state, save_state, step_dir_name


def test_save_load_round_trip(tmp_path: Path) -> None:
    state = {"step": 3, "w": torch.arange(4.0), "nested": {"a": [1, 2], "s": "x"}}
    save_state(state, tmp_path / "s.pt")
    loaded = load_state(tmp_path / "s.pt")
    assert loaded["step"] == 3 and torch.equal(loaded["w"], state["w"])
    assert loaded["nested"] == {"a": [1, 2], "s": "x"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_cannot_run_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        torch.save({"x": _Evil()}, handle, pickle_module=pickle)
    with pytest.raises(CheckpointLoadError):
        load_state(path)


def test_truncated_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    save_state({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointLoadError):
        load_state(path)
    with pytest.raises(CheckpointLoadError, match="no checkpoint"):
        load_state(tmp_path / "missing.pt")


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "s.pt"
    save_state({"v": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_state({"v": Boom()}, path)
    assert load_state(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]


def test_step_names_sort_like_steps() -> None:
    names = [step_dir_name(s) for s in (9, 10, 100, 2)]
    assert sorted(names) == [step_dir_name(s) for s in (2, 9, 10, 100)]
