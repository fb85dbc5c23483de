"""Checkpoint files: atomic, listed by step, newest K kept, loaded without running code."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from seer_core.checkpoint import (
    LATEST_FILE,
    STATE_FILE,
    CheckpointLoadError,
    CheckpointStore,
    load_state,
    save_state,
    step_dir_name,
)


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


def test_store_keeps_newest_k_and_points_latest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    assert store.latest() is None
    for step in (10, 20, 30, 40):
        store.save({"step": step}, step)
    assert [i.step for i in store.list()] == [30, 40]
    latest = store.latest()
    assert latest is not None and latest.step == 40
    assert (tmp_path / LATEST_FILE).read_text().strip() == step_dir_name(40)
    assert load_state(latest.path)["step"] == 40


def test_store_ignores_incomplete_and_falls_back(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    store.save({"step": 5}, 5)
    (tmp_path / step_dir_name(9)).mkdir()  # a crash before the state file landed
    (tmp_path / LATEST_FILE).write_text(step_dir_name(9))
    latest = store.latest()
    assert latest is not None and latest.step == 5
    assert (tmp_path / step_dir_name(5) / STATE_FILE).is_file()


def test_step_names_sort_like_steps() -> None:
    names = [step_dir_name(s) for s in (9, 10, 100, 2)]
    assert sorted(names) == [step_dir_name(s) for s in (2, 9, 10, 100)]
