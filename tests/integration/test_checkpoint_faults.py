"""Cluster faults around checkpoints, staged on real Ray (2 gloo workers) and the real S3 server
behind the fault proxy: the run never rewinds, never ends itself over an outage, and never loses
its newest committed checkpoint.

- A worker group SIGKILLed while the store throttles every object read (503 SlowDown, what a
  bucket answers when every rank reads a large state at once), then killed again while every
  request to the store fails: each restarted group waits for the store and trains on from the
  newest committed step. (Before: the first restart took the throttled reads for corruption
  and trained again from step 0; the second ended the run as "deterministic".)
- Killed between the upload of a checkpoint and its commit, after an earlier commit had met
  store errors: the newest committed checkpoint survives and the run resumes from it.
  (Before: a failed commit was only logged, and Ray Train's own retention, which ran when it
  registered a report, deleted the older committed checkpoints: no committed one was left.)
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from services.driver.pretrain import PretrainOutcome, run_pretraining
from services.storage import RunStorage, resolve_storage
from tests.integration.test_trainer import (  # noqa: F401
    _the_two_workers,
    ckpt_bucket,
    service_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Run:
    """`run_pretraining` in a thread (synthetic batches: the stream is not what is tested)."""

    def __init__(self, cfg: Any) -> None:
        self.outcome: list[PretrainOutcome] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._main, args=(cfg,), daemon=True)
        self.thread.start()

    def _main(self, cfg: Any) -> None:
        try:
            self.outcome.append(run_pretraining(cfg, synthetic=True, install_signals=False))
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)

    def wait_for_committed(self, storage: RunStorage, step: int, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert not self.errors, self.errors
            assert self.thread.is_alive(), "the run ended early"
            if any(s >= step for s, _ in storage.list_checkpoints()):
                return
            time.sleep(0.3)
        raise AssertionError(f"no committed checkpoint at step >= {step} within {timeout} s")

    def result(self, timeout: float = 300) -> PretrainOutcome:
        self.thread.join(timeout=timeout)
        assert not self.thread.is_alive(), "the run did not finish"
        assert not self.errors, self.errors
        return self.outcome[0]


def _run_behind_proxy(s3_server: Any, fault_proxy: Any, bucket: str, run: str,
                      *extra: str) -> tuple[Any, RunStorage]:
    """A 2-worker config whose checkpoints go through the fault proxy, and the store as the
    test sees it (directly, past the proxy)."""
    cfg = service_config(s3_server.endpoint_url, "unused", bucket, run,
                         f"checkpoint.endpoint_url={fault_proxy.endpoint_url}", *extra)
    return cfg, resolve_storage(f"s3://{bucket}/runs", run, s3_server.endpoint_url)


def _kill_workers() -> None:
    for proc in _the_two_workers():
        proc.send_signal(signal.SIGKILL)


@pytest.mark.timeout(600)
def test_restarts_during_store_outages_train_on_from_the_newest_committed_step(
        ray_cluster, s3_server, fault_proxy, ckpt_bucket) -> None:  # noqa: F811
    run = "outage"
    cfg, storage = _run_behind_proxy(s3_server, fault_proxy, ckpt_bucket, run,
                                     "train.max_steps=12")
    training = Run(cfg)
    training.wait_for_committed(storage, 3)

    # 1. Every object read throttled (listings answer), and the group killed.
    fault_proxy.fail_next(-1, 503, "SlowDown", match=rf"^GET /{ckpt_bucket}/runs/{run}/step_")
    committed = max(s for s, _ in storage.list_checkpoints())
    _kill_workers()
    time.sleep(25)  # the restarted group meets the throttled reads and must wait
    served = fault_proxy.faults_served
    assert served > 0, "the restarted group never tried to read its checkpoint"
    fault_proxy.clear()
    training.wait_for_committed(storage, committed + 3)
    assert min(s for s, _ in storage.list_checkpoints()) >= committed  # nothing rewound

    # 2. Every request to the store fails, and the group killed again.
    fault_proxy.fail_next(-1, 503, "ServiceUnavailable")
    committed = max(s for s, _ in storage.list_checkpoints())
    _kill_workers()
    time.sleep(25)
    assert fault_proxy.faults_served > served
    fault_proxy.clear()

    outcome = training.result()
    assert outcome.step == 12
    assert outcome.metrics["resumed_step"] == committed  # trained on from there, not from 0
    steps = [s for s, _ in storage.list_checkpoints()]
    assert steps[-1] == 12 and min(steps) >= committed, steps


@pytest.mark.timeout(480)
def test_a_kill_between_upload_and_commit_keeps_the_newest_committed_checkpoint(
        ray_cluster, s3_server, fault_proxy, ckpt_bucket) -> None:  # noqa: F811
    run = "commit-window"
    cfg, storage = _run_behind_proxy(s3_server, fault_proxy, ckpt_bucket, run,
                                     "train.max_steps=12", "checkpoint.keep=2")
    prefix = rf"^PUT /{ckpt_bucket}/runs/{run}/"
    # Step 6's commit meets store errors (more than pyarrow's own retries absorb) ...
    fault_proxy.fail_next(6, 503, "SlowDown", match=prefix + r"step_000000000006/commit\.json")
    # ... and step 9's commit hangs: the group is killed in that window.
    stalled = fault_proxy.stall_next(1, 120, match=prefix + r"step_000000000009/commit\.json")
    training = Run(cfg)
    deadline = time.monotonic() + 240
    while stalled.remaining != 0 and time.monotonic() < deadline:
        assert not training.errors, training.errors
        time.sleep(0.2)
    assert stalled.remaining == 0, "step 9 was never committed"
    assert [s for s, _ in storage.list_checkpoints()] == [3, 6]  # 6: retried, not dropped
    _kill_workers()

    outcome = training.result()
    assert outcome.metrics["resumed_step"] == 6  # the newest committed checkpoint survived
    assert outcome.step == 12
    assert [s for s, _ in storage.list_checkpoints()] == [9, 12]
