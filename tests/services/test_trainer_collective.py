"""Ranks give up on an unreachable store together (`services.trainer.collective`).

Real gloo process groups on 127.0.0.1, one process per rank: a rank that gave up alone would
leave the others in the next vote until the collective timeout, which only real processes show.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from datetime import timedelta
from typing import Any

import pytest
import torch

from tests.services.test_checkpoint_resume import _free_port

STARTUP_S = 180.0  # spawning and importing torch, on a busy machine
DEADLINE_S = 20.0  # far below the group's timeout: a hang shows as a missing answer


def _store_down(rank: int, port: int, grace_s: float, answers: Any, done: Any) -> None:
    """One rank whose every try meets a store error, its grace `grace_s`: it answers what it
    raised, its tries and its sleeps, then stays in the group until the test is done (a real
    trainer's process does not vanish the moment it raises either)."""
    import os

    from services.trainer import collective

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=2,
                                         timeout=timedelta(seconds=120))
    collective.FIRST_DELAY_S, collective.MAX_DELAY_S = 0.05, 0.2
    torch.distributed.barrier()  # both ranks start their grace together
    answers.put((rank, "ready", 0, []))
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    def unreachable() -> None:
        raise OSError("AWS Error SERVICE_UNAVAILABLE during GetObject: 503 SlowDown")

    wait = collective.StoreWait("read step_4", grace_s, sleep=sleep)
    try:
        collective.agree_with_retry(unreachable, wait)
        answers.put((rank, "returned", wait.attempt, sleeps))
    except Exception as exc:  # the answer is the exception's type
        answers.put((rank, type(exc).__name__, wait.attempt, sleeps))
    done.wait(DEADLINE_S + 30)
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # spawns a gloo process group
def test_ranks_whose_grace_ends_apart_give_up_together() -> None:
    """Rank 0's grace ends well before rank 1's (as a clock a little ahead would): both raise
    `StoreUnavailable` in the same round, after the same sleeps, instead of rank 0 leaving and
    rank 1 waiting in the next vote for the collective timeout."""
    context = multiprocessing.get_context("spawn")
    answers, done, port = context.Queue(), context.Event(), _free_port()
    ranks = [context.Process(target=_store_down, args=(rank, port, grace, answers, done))
             for rank, grace in ((0, 0.4), (1, 1.5))]
    for process in ranks:
        process.start()
    got: dict[int, tuple[str, int, list[float]]] = {}
    deadline = time.monotonic() + STARTUP_S
    try:
        while len(got) < 2 and time.monotonic() < deadline:
            try:
                rank, raised, tries, sleeps = answers.get(timeout=0.5)
            except queue.Empty:
                continue
            if raised == "ready":
                deadline = time.monotonic() + DEADLINE_S  # from the later rank's start
            else:
                got[rank] = (raised, tries, sleeps)
    finally:
        done.set()
        for process in ranks:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
    assert sorted(got) == [0, 1], f"a rank hung in the vote; answers: {got}"
    assert [got[r][0] for r in (0, 1)] == ["StoreUnavailable"] * 2, got
    assert got[0][1:] == got[1][1:], "the ranks tried or slept differently"
