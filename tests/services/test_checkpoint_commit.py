"""A checkpoint counts once its commit marker is there; a crash mid-write leaves a resumable store.

Every rank uploads its files of a checkpoint one by one, beside training, so `state.pt` being
there says nothing about the rest. Rank 0 writes a commit marker after every rank's upload is
done, then the `latest` pointer, then prunes (the only code that deletes checkpoints). Here a
real process writing checkpoints through that code path is SIGKILLed in the middle of one, on a
local folder and on S3 (moto on 127.0.0.1), and the next run must resume at the newest intact
step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
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


def test_only_committed_checkpoints_are_listed(tmp_path: Path) -> None:
    """A folder Ray is still copying (or was copying at a crash) is not a checkpoint for the
    trainer, `seer status`, `seer export` or the evaluator, even with state.pt and a meta.json
    without a format (once read as a checkpoint from before commit markers: never released)."""
    from services.evaluator.checkpoints import resolve_checkpoint

    run = tmp_path / "k"
    _touch(run / step_dir_name(1), STATE_FILE, meta={"step": 1})  # no marker: not one
    _touch(run / step_dir_name(2), STATE_FILE, "rank_00000.pt", meta={"step": 2, "format": 2})
    _touch(run / step_dir_name(3), STATE_FILE, "rank_00000.pt", COMMIT_FILE,
           meta={"step": 3, "format": 2})
    _touch(run / step_dir_name(4), STATE_FILE)  # state.pt alone: a copy cut short
    _touch(run / step_dir_name(5), STATE_FILE, meta='{"step": 5, "ti')  # meta.json cut short
    _touch(run / step_dir_name(6), COMMIT_FILE, STATE_FILE)  # committed, no meta: fine
    storage = resolve_storage(str(tmp_path), "k")
    assert [s for s, _ in storage.list_checkpoints()] == [3, 6]
    assert resolve_checkpoint("latest", storage).step == 6
    shutil.rmtree(run / step_dir_name(6))
    assert resolve_checkpoint("latest", storage).step == 3


def test_the_commit_follows_every_upload_then_latest_moves(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from seer_core.training import build_train_state
    from tests.services.checkpoint_helpers import save_checkpoint

    cfg = tiny_config(str(tmp_path))
    storage = resolve_storage(str(tmp_path), "k")
    seen_during_upload: list[set[str]] = []
    store = RunStorage.store_file

    def watched(self: RunStorage, local: Path, path: str) -> None:
        store(self, local, path)
        seen_during_upload.append({p.name for p in Path(path).parent.iterdir()})

    monkeypatch.setattr(RunStorage, "store_file", watched)
    state = build_train_state(cfg)
    state.step = 7
    save_checkpoint(state, storage)
    assert len(seen_during_upload) == 3  # state.pt, meta.json, rank_00000.pt
    assert all(COMMIT_FILE not in names for names in seen_during_upload)
    folder = tmp_path / "k" / step_dir_name(7)
    commit = json.loads((folder / COMMIT_FILE).read_text())
    assert commit["step"] == 7 and commit["world_size"] == 1
    assert json.loads((folder / META_FILE).read_text())["world_size"] == 1
    assert (tmp_path / "k" / LATEST_FILE).read_text().strip() == step_dir_name(7)
    assert storage.list_checkpoints() == [(7, str(folder))]


def test_a_failed_commit_is_retried_not_dropped(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17.2: a commit that meets a store error waits and tries again (it used to be
    logged and dropped: `keep` such failures in a row left no committed checkpoint)."""
    from seer_core.training import build_train_state
    from services.trainer import collective
    from tests.services.checkpoint_helpers import save_checkpoint

    monkeypatch.setattr(collective, "FIRST_DELAY_S", 0.01)
    storage = resolve_storage(str(tmp_path), "k")
    commit = RunStorage.commit
    failures = [0]

    def flaky(self: RunStorage, path: str, record: dict[str, Any]) -> None:
        if failures[0] < 2:
            failures[0] += 1
            raise OSError("AWS Error SERVICE_UNAVAILABLE during PutObject: 503 SlowDown")
        commit(self, path, record)

    monkeypatch.setattr(RunStorage, "commit", flaky)
    state = build_train_state(tiny_config(str(tmp_path)))
    state.step = 4
    save_checkpoint(state, storage)
    assert failures[0] == 2
    assert [s for s, _ in storage.list_checkpoints()] == [4]


def test_keep_below_two_is_refused() -> None:
    """One checkpoint may be mid-upload while the newest committed one must survive."""
    from seer_core.config import ConfigError

    with pytest.raises(ConfigError, match=r"checkpoint\.keep"):
        load_config("local", ["checkpoint.keep=1"])


def test_prune_keeps_the_newest_committed_and_any_upload_in_flight(tmp_path: Path) -> None:
    """Committed checkpoints beyond the newest `keep` go; incomplete folders older than the
    newest committed one are orphans of a crash and go; an incomplete folder newer than it may
    be an upload in flight: it stays."""
    run = tmp_path / "k"
    for step in (3, 6, 9, 10, 11):
        _touch(run / step_dir_name(step), STATE_FILE, COMMIT_FILE, meta={"format": 2})
    for step in (5, 8, 12):
        _touch(run / step_dir_name(step), STATE_FILE, meta={"format": 2})
    _touch(run / step_dir_name(7))  # empty: the crash came before the first file
    storage = resolve_storage(str(tmp_path), "k")
    removed = storage.prune(keep=2)
    left = sorted(p.name for p in run.iterdir() if p.name.startswith("step_"))
    assert left == [step_dir_name(s) for s in (10, 11, 12)], removed
    assert [s for s, _ in storage.list_checkpoints()] == [10, 11]
    with pytest.raises(ValueError, match="keep"):
        storage.prune(keep=1)


def block_upload(block_step: int, block_after: int) -> None:
    """Patches `RunStorage` so that, at `block_step`, `block_after` files are stored, then the
    writer prints BLOCKED and waits to be killed (a node lost mid-upload, or, once every file
    is stored, just before the commit marker)."""
    store, commit = RunStorage.store_file, RunStorage.commit
    stored = [0]

    def store_file(self: RunStorage, local: Path, path: str) -> None:
        if step_dir_name(block_step) in path:
            if stored[0] == block_after:
                _block()
            stored[0] += 1
        store(self, local, path)

    def commit_marker(self: RunStorage, path: str, record: dict[str, Any]) -> None:
        if step_dir_name(block_step) in path:
            _block()
        commit(self, path, record)

    RunStorage.store_file = store_file  # type: ignore[method-assign]
    RunStorage.commit = commit_marker  # type: ignore[method-assign]


def _block() -> None:
    print("BLOCKED", flush=True)
    while True:
        time.sleep(60)


def writer_main(storage_uri: str, endpoint: str, block_step: int, block_after: int) -> None:
    """Runs in a subprocess: checkpoints steps 1, 2, ... through the checkpoint writer until it
    blocks at `block_step` (and is killed); the first parameter holds the step, to check which
    checkpoint a resume loaded."""
    from seer_core.training import build_train_state, unwrap
    from services.trainer.checkpoints import storage_for
    from tests.services.checkpoint_helpers import save_checkpoint

    torch.set_num_threads(1)
    cfg = tiny_config(storage_uri, endpoint or None)
    block_upload(block_step, block_after)
    state = build_train_state(cfg)
    first = next(unwrap(state.model).parameters())
    step = 0
    while True:
        step += 1
        state.step = step
        with torch.no_grad():
            first.fill_(float(step))
        save_checkpoint(state, storage_for(cfg))
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
@pytest.mark.parametrize(("where", "block_after"), [("local", 1), ("local", 3), ("s3", 0),
                                                     ("s3", 3)])
def test_sigkill_mid_checkpoint_resumes_at_the_newest_intact_step(
        where: str, block_after: int, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while step 3 is being uploaded (after 0, 1 or all 3 files, before the marker):
    steps 1 and 2 are the checkpoints, the next run resumes at 2, and its next checkpoint
    prunes the orphan."""
    from seer_core.training import build_train_state, unwrap
    from services.trainer.checkpoints import restore, storage_for
    from tests.services.checkpoint_helpers import save_checkpoint

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
    latest = f"{storage.run_path}/{LATEST_FILE}"
    assert storage.read_bytes(latest) == f"{step_dir_name(2)}\n".encode()
    if block_after:
        assert 3 in [f.step for f in storage.scan()]  # the orphan is there

    state = build_train_state(cfg)
    with torch.random.fork_rng():
        source = restore(state, 0, 1)
    assert source is not None and source.endswith(step_dir_name(2)) and state.step == 2
    assert float(next(unwrap(state.model).parameters()).detach().flatten()[0]) == 2.0

    state.step = 5  # the resumed run trains on and writes its next checkpoint
    save_checkpoint(state, storage)
    assert [s for s, _ in storage.list_checkpoints()] == [2, 5]  # keep=2
    assert 3 not in [f.step for f in storage.scan()]  # the orphan is pruned
    assert storage.read_bytes(latest) == f"{step_dir_name(5)}\n".encode()
