"""services.driver.control's failure tracking: a failure repeating at the same step is
deterministic; others are not."""

from __future__ import annotations

import pytest

from services.driver.control import MAX_MESSAGE, FailureTracker, failure_signature


def test_same_error_same_step_three_times_is_fatal() -> None:
    tracker = FailureTracker(limit=3)
    assert tracker.failed(0, 57, "ValueError: bad") == 1
    assert tracker.failed(0, 57, "ValueError: bad") == 2
    assert tracker.fatal is None
    assert tracker.failed(0, 57, "ValueError: bad") == 3
    assert tracker.fatal is not None
    assert "step 57" in tracker.fatal and "ValueError: bad" in tracker.fatal


def test_other_ranks_of_one_attempt_count_once() -> None:
    tracker = FailureTracker(limit=2)
    assert tracker.failed(0, 5, "E: x") == 1
    assert tracker.failed(1, 5, "E: x") == 1  # the same attempt, another rank
    assert tracker.fatal is None
    assert tracker.failed(1, 5, "E: x") == 1  # still the attempt's second rank
    assert tracker.failed(0, 5, "E: x") == 2  # the next attempt
    assert tracker.fatal is not None


@pytest.mark.parametrize(
    "second",
    [(0, 57, "ValueError: other"), (0, 58, "ValueError: bad")],
    ids=["another error", "another step"],
)
def test_a_different_failure_starts_the_count_again(second: tuple[int, int, str]) -> None:
    tracker = FailureTracker(limit=2)
    tracker.failed(0, 57, "ValueError: bad")
    assert tracker.failed(*second) == 1
    assert tracker.fatal is None


def test_progress_past_the_failure_resets_it() -> None:
    tracker = FailureTracker(limit=2)
    tracker.failed(0, 57, "E: x")
    tracker.progressed(57)  # replaying up to the failure is not progress
    assert tracker.failed(0, 57, "E: x") == 2
    tracker = FailureTracker(limit=2)
    tracker.failed(0, 57, "E: x")
    tracker.progressed(58)  # a killed worker: the run went on after it
    assert tracker.failed(0, 57, "E: x") == 1
    assert tracker.fatal is None


def test_signature_is_type_and_bounded_message() -> None:
    assert failure_signature(ValueError("boom")) == "ValueError: boom"
    assert len(failure_signature(RuntimeError("x" * 10_000))) == MAX_MESSAGE


def test_the_limit_is_at_least_one() -> None:
    """The tracker's limit is `train.max_repeated_failures`, which the schema bounds."""
    from seer_core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"train\.max_repeated_failures.*>= 1"):
        load_config("local", ["train.max_repeated_failures=0"])
