"""Workers SIGKILLed in the middle of a checkpoint upload, on a real Ray run with S3 storage.

The checkpoint store sits behind a fault proxy that stalls the upload of rank 1's file of step
6: rank 0's files of that step are stored, rank 1's never arrive, and while it hangs every
training worker is killed with SIGKILL. The half-written step 6 must not count; Ray Train
restarts the group, which resumes at the newest intact step (3) and trains on, writing step 6
again and committing it.
"""

from __future__ import annotations

import signal
import time

import pytest

from seer_core.checkpoint import COMMIT_FILE, STATE_FILE
from services.driver.pretrain import run_pretraining
from services.storage import resolve_storage
from tests.integration.test_trainer import (  # noqa: F401
    _train_workers,
    ckpt_bucket,
    service_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(480)
def test_sigkill_mid_checkpoint_resumes_at_the_newest_intact_step(
    ray_cluster, s3_server, fault_proxy, ckpt_bucket  # noqa: F811
) -> None:
    import threading

    run = "sigkill"
    cfg = service_config(s3_server.endpoint_url, "unused", ckpt_bucket, run,
                         f"checkpoint.endpoint_url={fault_proxy.endpoint_url}",
                         "train.max_steps=9")
    storage = resolve_storage(f"s3://{ckpt_bucket}/runs", run, s3_server.endpoint_url)
    step6 = f"{storage.run_path}/step_000000000006"
    stalled = fault_proxy.stall_next(
        1, 120, match=rf"^PUT /{ckpt_bucket}/runs/{run}/step_000000000006/rank_00001\.pt")

    outcome: list = []
    errors: list[BaseException] = []

    def train() -> None:
        try:
            outcome.append(run_pretraining(cfg, synthetic=True, install_signals=False))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    deadline = time.monotonic() + 240
    while stalled.remaining != 0 and time.monotonic() < deadline:
        assert not errors, errors
        time.sleep(0.2)
    assert stalled.remaining == 0, "the upload of step 6 never started"

    # Rank 0's part of step 6 is stored (its upload was not held); rank 1's hangs. Kill them.
    deadline = time.monotonic() + 60
    names = storage.folder_files(step6)
    while STATE_FILE not in names and time.monotonic() < deadline:
        time.sleep(0.2)
        names = storage.folder_files(step6)
    assert STATE_FILE in names and COMMIT_FILE not in names, names
    workers = _train_workers()
    assert len(workers) == 2
    for proc in workers:
        proc.send_signal(signal.SIGKILL)
    assert [s for s, _ in storage.list_checkpoints()] == [3]  # step 6 is not a checkpoint

    thread.join(timeout=360)
    assert not thread.is_alive(), "the run did not finish after the kill"
    assert not errors, errors
    assert outcome[0].metrics["resumed_step"] == 3  # the newest intact step
    assert outcome[0].step == 9
    assert [s for s, _ in storage.list_checkpoints()] == [6, 9]  # step 6 written again
    for _, path in storage.list_checkpoints():
        assert storage.read_json(f"{path}/{COMMIT_FILE}")["world_size"] == 2
