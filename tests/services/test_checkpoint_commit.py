"""A checkpoint counts once its commit marker is there; a crash mid-write leaves a resumable store.

Ray Train copies a checkpoint's files one by one into the store (in no fixed order, in parallel
on a local folder), so `state.pt` being there says nothing about the rest. The trainer writes a
commit marker after every rank's copy has returned, then the `latest` pointer, then prunes what
crashes left behind. Here a real process writing checkpoints through that code path is
SIGKILLed in the middle of one, on a local folder and on S3 (moto on 127.0.0.1), and the next
run must resume at the newest intact step.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from seer_core.checkpoint import COMMIT_FILE, LATEST_FILE, STATE_FILE, step_dir_name
from seer_core.config import SeerConfig, load_config
from services.storage import META_FILE, RunStorage, resolve_storage

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.trunk=tiny", "model.head_hidden=[16]", "model.head_out=8", "model.prototypes=8",
        "train.batch_size=4", "train.amp=off", "swav.queue_length=8", "checkpoint.run_name=k",
        "checkpoint.keep=2", "train.seed=3"]


def tiny_config(storage: str, endpoint: str | None = None) -> SeerConfig:
    extra = [f"checkpoint.endpoint_url={endpoint}"] if endpoint else []
    return load_config("local", [*TINY, f"checkpoint.storage={storage}", *extra])


def _touch(folder: Path, *names: str, meta: Any = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    if meta is not None:
        (folder / META_FILE).write_text(meta if isinstance(meta, str) else json.dumps(meta))


def test_only_committed_or_legacy_checkpoints_are_listed(tmp_path: Path) -> None:
    """A folder Ray is still copying (or was copying at a crash) is not a checkpoint for the
    trainer, `seer status`, `seer export` or the evaluator; one written before commit markers
    existed (state.pt + a meta.json without a format) still is."""
    from services.evaluator.checkpoints import resolve_checkpoint

    run = tmp_path / "k"
    _touch(run / step_dir_name(1), STATE_FILE, meta={"step": 1})  # legacy: complete
    _touch(run / step_dir_name(2), STATE_FILE, "rank_00000.pt", meta={"step": 2, "format": 2})
    _touch(run / step_dir_name(3), STATE_FILE, "rank_00000.pt", COMMIT_FILE,
           meta={"step": 3, "format": 2})
    _touch(run / step_dir_name(4), STATE_FILE)  # state.pt alone: a copy cut short
    _touch(run / step_dir_name(5), STATE_FILE, meta='{"step": 5, "ti')  # meta.json cut short
    _touch(run / step_dir_name(6), COMMIT_FILE, STATE_FILE)  # committed, no meta: fine
    storage = resolve_storage(str(tmp_path), "k")
    assert [s for s, _ in storage.list_checkpoints()] == [1, 3, 6]
    assert resolve_checkpoint("latest", storage).step == 6
    shutil.rmtree(run / step_dir_name(6))
    assert resolve_checkpoint("latest", storage).step == 3


def test_report_commits_after_every_copy_then_points_latest(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    import ray.train

    from seer_core.training import build_train_state
    from services.trainer.checkpoints import report_checkpoint

    cfg = tiny_config(str(tmp_path))
    storage = resolve_storage(str(tmp_path), "k")
    seen_during_copy: list[set[str]] = []
    copy = ray_like_report(storage)

    def report(metrics: dict[str, Any], checkpoint: Any = None, **kwargs: Any) -> None:
        copy(metrics, checkpoint=checkpoint, **kwargs)
        folder = tmp_path / "k" / kwargs["checkpoint_dir_name"]
        seen_during_copy.append({p.name for p in folder.iterdir()})

    monkeypatch.setattr(ray.train, "report", report)
    state = build_train_state(cfg)
    state.step = 7
    report_checkpoint(state, 0, None)
    assert seen_during_copy and COMMIT_FILE not in seen_during_copy[0]
    folder = tmp_path / "k" / step_dir_name(7)
    commit = json.loads((folder / COMMIT_FILE).read_text())
    assert commit["step"] == 7 and commit["world_size"] == 1
    assert json.loads((folder / META_FILE).read_text())["world_size"] == 1
    assert (tmp_path / "k" / LATEST_FILE).read_text().strip() == step_dir_name(7)
    assert storage.list_checkpoints() == [(7, str(folder))]


def test_prune_removes_crash_orphans_but_nothing_ray_tracks_or_a_live_write(
        tmp_path: Path) -> None:
    """Incomplete folders older than the newest committed one are orphans of a crash; committed
    ones beyond `keep` that Ray's run snapshot no longer names (and older than all it names) are
    orphans too. An incomplete folder newer than the newest committed one may be a checkpoint
    being written right now: it stays. So does anything Ray's snapshot names (Ray refuses to
    restore a run whose snapshot points at a deleted checkpoint)."""
    run = tmp_path / "k"
    for step in (3, 6, 9, 10, 11):
        _touch(run / step_dir_name(step), STATE_FILE, COMMIT_FILE, meta={"format": 2})
    for step in (5, 8, 12):
        _touch(run / step_dir_name(step), STATE_FILE, meta={"format": 2})
    _touch(run / step_dir_name(4), STATE_FILE, meta={"step": 4})  # legacy complete
    _touch(run / step_dir_name(7))  # empty: the crash came before the first file
    # What Ray 2.60 writes (CheckpointManager._save_state): it names the folders it tracks.
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps({
        "checkpoint_results": [{"checkpoint_dir_name": step_dir_name(s), "metrics": {}}
                               for s in (6, 10, 11)],
        "latest_checkpoint_result": {"checkpoint_dir_name": step_dir_name(11)}}))
    storage = resolve_storage(str(tmp_path), "k")
    removed = storage.prune(keep=2)
    left = sorted(p.name for p in run.iterdir() if p.name.startswith("step_"))
    assert left == [step_dir_name(s) for s in (6, 9, 10, 11, 12)], removed
    # 9 is beyond keep and unknown to Ray, but newer than the oldest step Ray tracks (6): Ray
    # may still be about to register it, so it waits for a later prune.
    assert [s for s, _ in storage.list_checkpoints()] == [6, 9, 10, 11]

    (run / "checkpoint_manager_snapshot.json").write_text("not json")
    assert storage.prune(keep=1) == []  # an unreadable snapshot: delete nothing committed


def ray_like_report(storage: RunStorage, block_step: int = -1, block_after: int = -1,
                    seed: int = 0) -> Callable[..., None]:
    """`ray.train.report` for a checkpoint as Ray 2.60 runs it in SYNC mode: the step folder is
    created and the files are copied into the store, then it returns. Files are copied one by
    one, in a seeded random order (Ray's order is not fixed: pyarrow copies a local folder with
    threads). At `block_step`, after `block_after` files, the next one is half-written (when
    there is one), BLOCKED is printed and the writer waits to be killed."""
    order = random.Random(seed)

    def report(metrics: dict[str, Any], checkpoint: Any = None,
               checkpoint_dir_name: str | None = None, **_: Any) -> None:
        if checkpoint is None:
            return
        destination = f"{storage.run_path}/{checkpoint_dir_name}"
        storage.filesystem.create_dir(destination)
        names = sorted(os.listdir(checkpoint.path))
        order.shuffle(names)
        blocking = metrics.get("step") == block_step
        for index, name in enumerate(names):
            data = (Path(checkpoint.path) / name).read_bytes()
            with storage.filesystem.open_output_stream(f"{destination}/{name}") as out:
                if blocking and index == block_after:
                    out.write(data[: len(data) // 2])
                    out.flush()
                    _block()
                out.write(data)
        if blocking:
            _block()

    return report


def _block() -> None:
    print("BLOCKED", flush=True)
    while True:
        time.sleep(60)


def writer_main(storage_uri: str, endpoint: str, block_step: int, block_after: int) -> None:
    """Runs in a subprocess: checkpoints steps 1, 2, ... through `report_checkpoint` until it
    blocks at `block_step` (and is killed); the first parameter holds the step, to check which
    checkpoint a resume loaded."""
    import ray.train

    from seer_core.training import build_train_state, unwrap
    from services.trainer.checkpoints import report_checkpoint, storage_for

    torch.set_num_threads(1)
    cfg = tiny_config(storage_uri, endpoint or None)
    ray.train.report = ray_like_report(storage_for(cfg), block_step, block_after)
    state = build_train_state(cfg)
    first = next(unwrap(state.model).parameters())
    step = 0
    while True:
        step += 1
        state.step = step
        with torch.no_grad():
            first.fill_(float(step))
        report_checkpoint(state, 0, None)
        print(f"COMMITTED {step}", flush=True)


def _run_writer_until_blocked(storage_uri: str, endpoint: str, block_step: int,
                              block_after: int) -> None:
    code = ("import sys; from tests.services.test_checkpoint_commit import writer_main; "
            "writer_main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, storage_uri, endpoint, str(block_step),
                             str(block_after)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.strip() == "BLOCKED":
                break
        assert lines and lines[-1] == "BLOCKED", (lines, proc.stderr.read() if proc.stderr
                                                  else "")
        assert lines[-2] == f"COMMITTED {block_step - 1}", lines
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-checkpoint, as a node loss or OOM kill would
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize(("where", "block_after"), [("local", 1), ("local", 3), ("s3", 2),
                                                     ("s3", 3)])
def test_sigkill_mid_checkpoint_resumes_at_the_newest_intact_step(
        where: str, block_after: int, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while step 3 is being copied (after 1 file and half of the next, after 2, or after
    all 3 files but before the marker): steps 1 and 2 are the checkpoints, the next run resumes
    at 2, and its next checkpoint prunes the orphan."""
    import ray.train

    from seer_core.training import build_train_state, unwrap
    from services.trainer.checkpoints import report_checkpoint, restore, storage_for

    if where == "s3":
        s3_server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        uri, endpoint = f"s3://{bucket}/runs", s3_server.endpoint_url
    else:
        uri, endpoint = str(tmp_path / "store"), ""
    _run_writer_until_blocked(uri, endpoint, 3, block_after)

    cfg = tiny_config(uri, endpoint or None)
    storage = storage_for(cfg)
    assert [s for s, _ in storage.list_checkpoints()] == [1, 2]
    assert storage.read_latest() == step_dir_name(2)
    assert step_dir_name(3) in [f.name for f in storage.scan()]  # the orphan is there

    state = build_train_state(cfg)
    with torch.random.fork_rng():
        source = restore(state, 0, 1)
    assert source is not None and source.endswith(step_dir_name(2)) and state.step == 2
    assert float(next(unwrap(state.model).parameters()).detach().flatten()[0]) == 2.0

    monkeypatch.setattr(ray.train, "report", ray_like_report(storage))
    state.step = 5  # the resumed run trains on and writes its next checkpoint
    report_checkpoint(state, 0, None)
    assert [s for s, _ in storage.list_checkpoints()] == [1, 2, 5]
    assert step_dir_name(3) not in [f.name for f in storage.scan()]  # the orphan is pruned
    assert storage.read_latest() == step_dir_name(5)
