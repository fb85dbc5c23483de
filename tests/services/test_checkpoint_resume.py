"""Resuming a never-ending run: another world size, one checkpoint for all ranks, per-rank streams.

The checkpoints here are written the way the trainer writes them: every rank of a real gloo
process group (127.0.0.1) uploads its files through a `CheckpointWriter` and rank 0 commits once
every rank's upload is done. The resumes run in real process groups too (1, 2 or 3 processes),
through `restore` as the Train loop calls it.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from seer_core.config import SeerConfig, load_config
from seer_core.swav.queue import SwAVQueue
from tests.seer_core.test_training import fixed_batch

TINY = ["model.trunk=tiny", "model.head_hidden=[16]", "model.head_out=8", "model.prototypes=8",
        "augment.global_size=32", "augment.local_size=16", "train.batch_size=4",
        "train.amp=off", "swav.queue_start_step=0", "swav.freeze_prototypes_steps=1",
        "checkpoint.run_name=r", "checkpoint.keep=3", "train.seed=7"]
STEP2, STEP4 = "step_000000000002", "step_000000000004"


def tiny_config(storage: Path, workers: int) -> SeerConfig:
    """`swav.queue_length` must be a multiple of the worker count: 16 for 1 or 2, 12 for 3."""
    length = 12 if workers == 3 else 16
    return load_config("local", [*TINY, f"checkpoint.storage={storage}",
                                 f"train.num_workers={workers}", f"swav.queue_length={length}"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init_group(rank: int, world: int, port: int) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world)


def _draws(state: Any) -> dict[str, Any]:
    """The next numbers of every random stream a rank owns (what a resume must reproduce)."""
    return {"torch": torch.rand(4), "python": random.random(), "numpy": float(np.random.rand()),
            "generator": torch.rand(4, generator=state.generator)}


def _queue_copy(state: Any) -> dict[str, Any]:
    return {"embeddings": state.queue.embeddings.clone(), "filled": state.queue.filled}


def _write_two_rank_run(rank: int, world: int, port: int, storage: str, out: str) -> None:
    """A 2-rank run with distinct streams and queues per rank, checkpointed at steps 2 and 4."""
    from seer_core.training import build_train_state, train_step
    from services.trainer.checkpoints import storage_for
    from tests.services.checkpoint_helpers import save_checkpoint

    _init_group(rank, world, port)
    cfg = tiny_config(Path(storage), world)
    state = build_train_state(cfg)
    torch.manual_seed(100 + rank)
    random.seed(200 + rank)
    np.random.seed(300 + rank)
    state.generator.manual_seed(400 + rank)
    expected: dict[str, Any] = {}
    for step in (2, 4):
        while state.step < step:
            train_step(state, fixed_batch(cfg, state.recipe, seed=10 * rank + state.step))
        assert state.queue is not None and state.queue.in_use
        queue = _queue_copy(state)
        save_checkpoint(state, storage_for(cfg), rank, world)
        expected[step] = {"queue": queue, "draws": _draws(state)}
    torch.save(expected, Path(out) / f"written_rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _resume(rank: int, world: int, port: int, storage: str, out: str,
            unreadable_on_rank1: str | None, how: str = "corrupt") -> None:
    """A resumed worker: builds its state for `world` ranks, restores, records what it got.
    With `unreadable_on_rank1`, rank 1's reads of that step fail: `corrupt` for good (the file
    does not unpickle), `store` twice with a store error (its node cannot reach the store)."""
    from seer_core.checkpoint import CheckpointLoadError
    from seer_core.training import build_train_state
    from services.trainer import checkpoints

    _init_group(rank, world, port)
    if rank == 1 and unreadable_on_rank1:
        real = checkpoints.load_state
        failures = [0]

        def flaky(path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            if unreadable_on_rank1 in str(path):
                if how == "corrupt":
                    raise CheckpointLoadError(f"cannot load checkpoint {path}: bad zip")
                if failures[0] < 2:
                    failures[0] += 1
                    raise OSError(f"AWS Error SLOW_DOWN during GetObject of {path}")
            return real(path, *args, **kwargs)

        checkpoints.load_state = flaky
    state = build_train_state(tiny_config(Path(storage), world))
    state.cfg.checkpoint.store_grace_minutes = 5.0
    source = checkpoints.restore(state, rank, world)
    torch.save({"source": source, "step": state.step, "queue": _queue_copy(state),
                "draws": _draws(state)}, Path(out) / f"resumed_w{world}_rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _spawn(fn: Callable[..., None], world: int, *args: Any) -> None:
    torch.multiprocessing.spawn(fn, args=(world, _free_port(), *args), nprocs=world, join=True)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """(storage, per-rank expectations) of a 2-rank run checkpointed at steps 2 and 4."""
    root = tmp_path_factory.mktemp("two-ranks")
    storage, out = root / "ckpt", root / "out"
    out.mkdir()
    _spawn(_write_two_rank_run, 2, str(storage), str(out))
    return storage, [torch.load(out / f"written_rank{r}.pt", weights_only=True)
                     for r in range(2)]


@pytest.fixture
def own_rng() -> Iterator[None]:
    """An in-process restore sets the global streams: give the rest of the session its own."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _rows(embeddings: torch.Tensor, filled: int) -> list[tuple[float, ...]]:
    """The valid queue rows, crop by crop, as hashable tuples."""
    return [tuple(row.tolist()) for crop in embeddings for row in crop[:filled]]


def _old_rows(expected: list[dict], step: int) -> list[tuple[float, ...]]:
    return [row for e in expected for row in _rows(e[step]["queue"]["embeddings"],
                                                   e[step]["queue"]["filled"])]


def _same_draws(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (torch.equal(a["torch"], b["torch"]) and a["python"] == b["python"]
            and a["numpy"] == b["numpy"] and torch.equal(a["generator"], b["generator"]))


def _any_same_draw(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (torch.equal(a["torch"], b["torch"]) or a["python"] == b["python"]
            or a["numpy"] == b["numpy"] or torch.equal(a["generator"], b["generator"]))


@pytest.mark.slow  # spawns gloo process groups
def test_a_two_worker_checkpoint_resumes_with_one_worker(two_rank_run, own_rng) -> None:
    """Item 2: 2 -> 1 worker. The one queue (16 rows) takes both old queues (8 rows each)."""
    from seer_core.training import build_train_state
    from services.trainer.checkpoints import restore

    storage, expected = two_rank_run
    state = build_train_state(tiny_config(storage, 1))
    source = restore(state, 0, 1)
    assert source is not None and source.endswith(STEP4) and state.step == 4
    assert state.queue is not None and state.queue.filled == 16 and state.queue.in_use
    got = _rows(state.queue.embeddings, state.queue.filled)
    assert sorted(got) == sorted(_old_rows(expected, 4))  # all of them, none twice
    # The old rank 0 keeps its own streams; its saved queue's newest row stays the newest.
    assert torch.equal(state.queue.embeddings[:, 0], expected[0][4]["queue"]["embeddings"][:, 0])
    assert _same_draws(_draws(state), expected[0][4]["draws"])


@pytest.mark.slow  # spawns gloo process groups
def test_three_workers_share_the_rows_and_get_their_own_streams(two_rank_run,
                                                                tmp_path: Path) -> None:
    """Items 2 and 4: 2 -> 3 workers. Rows are dealt out, never duplicated; old ranks keep their
    random streams; the new rank gets a fresh one that differs from both."""
    storage, expected = two_rank_run
    _spawn(_resume, 3, str(storage), str(tmp_path), None)
    got = [torch.load(tmp_path / f"resumed_w3_rank{r}.pt", weights_only=True) for r in range(3)]
    assert [g["step"] for g in got] == [4, 4, 4]
    assert all(g["source"].endswith(STEP4) for g in got)
    rows = [_rows(g["queue"]["embeddings"], g["queue"]["filled"]) for g in got]
    assert [g["queue"]["filled"] for g in got] == [4, 4, 4]  # 12 // 3: full at once
    flat = [row for per_rank in rows for row in per_rank]
    assert len(flat) == len(set(flat)), "a queue row was given to two ranks"
    assert set(flat) <= set(_old_rows(expected, 4))
    for rank in (0, 1):
        assert _same_draws(got[rank]["draws"], expected[rank][4]["draws"]), rank
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not _any_same_draw(got[a]["draws"], got[b]["draws"]), (a, b)


@pytest.mark.slow  # spawns gloo process groups
def test_a_corrupt_checkpoint_on_one_rank_is_skipped_by_all(two_rank_run,
                                                            tmp_path: Path) -> None:
    """Item 3: step 4 does not unpickle on rank 1: both ranks go back to step 2 together, each
    with its own queue and streams (item 4), and step 4 no longer counts (un-committed, so the
    run writes it again)."""
    import shutil

    from services.storage import resolve_storage

    written, expected = two_rank_run
    storage = tmp_path / "ckpt"
    shutil.copytree(written, storage)
    _spawn(_resume, 2, str(storage), str(tmp_path), STEP4, "corrupt")
    got = [torch.load(tmp_path / f"resumed_w2_rank{r}.pt", weights_only=True) for r in range(2)]
    assert [g["step"] for g in got] == [2, 2], "ranks resumed from different checkpoints"
    assert all(g["source"].endswith(STEP2) for g in got)
    for rank in (0, 1):
        saved = expected[rank][2]["queue"]
        assert got[rank]["queue"]["filled"] == saved["filled"]
        assert torch.equal(got[rank]["queue"]["embeddings"], saved["embeddings"]), rank
        assert _same_draws(got[rank]["draws"], expected[rank][2]["draws"]), rank
    assert [s for s, _ in resolve_storage(str(storage), "r").list_checkpoints()] == [2]


@pytest.mark.slow  # spawns gloo process groups
def test_a_store_error_on_one_rank_is_waited_out_by_all(two_rank_run, tmp_path: Path) -> None:
    """Issue 17.1: rank 1 cannot reach the store for its file of step 4 (twice): that is no
    corruption. Both ranks wait and retry together, and both resume at step 4, not step 2."""
    storage, expected = two_rank_run
    _spawn(_resume, 2, str(storage), str(tmp_path), STEP4, "store")
    got = [torch.load(tmp_path / f"resumed_w2_rank{r}.pt", weights_only=True) for r in range(2)]
    assert [g["step"] for g in got] == [4, 4]
    for rank in (0, 1):
        assert _same_draws(got[rank]["draws"], expected[rank][4]["draws"]), rank


@pytest.mark.parametrize(("old_world", "new_world", "filled"),
                         [(2, 2, 8), (2, 2, 5), (2, 1, 8), (2, 3, 8), (3, 2, 3), (4, 3, 2)])
def test_queue_rows_are_dealt_out_once(old_world: int, new_world: int, filled: int) -> None:
    """Old row i of rank o is global row g = i * W_old + o (same age side by side); new rank r
    takes the rows g = r (mod W_new), newest first, as many as its queue holds."""
    from seer_core.swav.queue import gather_queue_rows, queue_picks

    length, dim, crops = 24, 3, (0, 1)
    old_rows, new_rows = length // old_world, length // new_world
    gen = torch.Generator().manual_seed(old_world * 10 + new_world)
    parts = {}
    for o in range(old_world):
        old = SwAVQueue(length, dim, crops, world_size=old_world)
        old.embeddings = torch.randn(2, old_rows, dim, generator=gen)
        old.filled = filled
        parts[o] = old.state_dict()
    taken: list[tuple[float, ...]] = []
    for r in range(new_world):
        picks = queue_picks(old_world, old_rows, filled, r, new_world, new_rows)
        state = gather_queue_rows({o: parts[o] for o, _ in picks}, picks, new_rows, crops, dim)
        queue = SwAVQueue(length, dim, crops, world_size=new_world)
        queue.load_state_dict(state)
        taken += _rows(queue.embeddings, queue.filled)
        if new_world == old_world:  # the same world size gives every rank its own queue back
            assert torch.equal(queue.embeddings[:, :filled], parts[r]["embeddings"][:, :filled])
            assert queue.filled == filled
    assert len(taken) == len(set(taken))
    everything = [tuple(row.tolist()) for p in parts.values() for crop in p["embeddings"]
                  for row in crop[:filled]]
    assert set(taken) <= set(everything)
    valid = filled * old_world
    assert len(taken) == 2 * sum(min(new_rows, len(range(r, valid, new_world)))
                                 for r in range(new_world))


def test_a_folder_without_commit_marker_is_not_resumed(tmp_path: Path, own_rng) -> None:
    """state.pt, meta.json without a format and queue_rank<r>.pt but no commit.json (the layout
    from before commit markers, never released) is an upload that never committed: the run
    starts fresh rather than reading it."""
    import json

    from seer_core.checkpoint import save_state
    from seer_core.training import build_train_state, state_dict
    from services.trainer.checkpoints import restore

    old = build_train_state(tiny_config(tmp_path, 1))
    old.step, old.images_seen = 6, 24
    folder = tmp_path / "r" / "step_000000000006"
    assert old.queue is not None
    save_state(old.queue.state_dict(), folder / "queue_rank00000.pt")
    save_state(state_dict(old), folder / "state.pt")
    (folder / "meta.json").write_text(json.dumps({"step": 6, "images_seen": 24}))

    state = build_train_state(tiny_config(tmp_path, 1))
    assert restore(state, 0, 1) is None and state.step == 0


def test_a_saved_queue_with_non_finite_rows_starts_empty(tmp_path: Path, own_rng,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint written while a NaN sat in the queue (before skipped steps stopped pushing):
    loading it would skip every step from then on, since a skipped step no longer pushes the
    row out. The model and step come back; the queue starts empty and refills."""
    import logging

    from seer_core.training import build_train_state
    from services.trainer.checkpoints import restore, storage_for
    from tests.services.checkpoint_helpers import save_checkpoint

    old = build_train_state(tiny_config(tmp_path, 1))
    old.step, old.images_seen = 6, 24
    assert old.queue is not None
    old.queue.embeddings = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(5))
    old.queue.embeddings[1, 3] = float("nan")
    old.queue.filled = 16
    save_checkpoint(old, storage_for(old.cfg))

    state = build_train_state(tiny_config(tmp_path, 1))
    with caplog.at_level(logging.WARNING, logger="seer.trainer"):
        source = restore(state, 0, 1)
    assert source is not None and state.step == 6
    assert state.queue is not None and state.queue.filled == 0
    assert torch.isfinite(state.queue.embeddings).all()
    assert any("non-finite rows" in r.getMessage() for r in caplog.records)
