"""The soak's consumer timeline (``stream_soak.consume``), on a fake clock: no Ray, no sleep.

Issue 17, point 15: the soak failed in a fresh-clone CI run on a loaded 2-core machine with
``images_before == 0``: its stall was timed from when the stream was built, and the first batch
came after the stall had begun. The stall must come between batches however slow the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.integration.stream_soak import consume, new_report


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(first_batch_after_s: float, duration: float = 45.0) -> tuple[dict[str, Any], list]:
    """The consumer at 1 s a batch over a producer that needs `first_batch_after_s` for its
    first batch (actor start, first blocks), then has one ready whenever asked."""
    t = FakeTime()
    built = t.now
    samples: list[tuple[float, float]] = []  # (elapsed the consumer reports, fake time)

    def batches() -> Iterator[dict[str, Any]]:
        t.sleep(first_batch_after_s)
        while True:
            yield {"crops_32": SimpleNamespace(shape=(64, 4, 3, 32, 32))}

    def sample(elapsed: float) -> bool:
        samples.append((elapsed, t.now))
        return True

    report = new_report(duration, 64, 64)
    consume(batches(), duration, 1.0, sample, report, built=built, clock=t.clock, sleep=t.sleep)
    return report, samples


@pytest.mark.parametrize("slow_start_s", [2.0, 20.0, 60.0])
def test_the_stall_comes_between_batches_however_slow_the_start(slow_start_s: float) -> None:
    report, samples = run(slow_start_s)
    assert report["images_before"] > 0, report  # the CI failure: 0 when the start was slow
    assert report["images_after"] > 0, report
    assert report["first_batch_s"] == slow_start_s
    # ~13 batches in the 13.5 s before the stall, ~9 after it: the start's length changes
    # nothing (it used to eat into the phase before the stall, then the stall itself).
    assert report["images_before"] == 14 * 64
    assert report["images_after"] == 10 * 64
    # The consumer held the iterator for the whole stall, sampling every 0.25 s.
    stall = [e for e, _ in samples if 0.3 * 45 <= e < 0.8 * 45]
    assert len(stall) >= 0.5 * 45 / 0.25 - 1
