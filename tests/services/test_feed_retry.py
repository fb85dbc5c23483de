"""Retry policy, S3 error classification, and the rate-limited logger."""

from __future__ import annotations

import logging
import random

import botocore.exceptions
import pytest

from services.feed.retry import (
    MISSING,
    PERMANENT,
    TRANSIENT,
    RetryExhausted,
    RetryPolicy,
    call_with_retry,
    classify_s3_error,
    error_code,
)
from services.ratelimit import RateLimitedLogger


class FakeClock:
    """Deterministic time: sleeping advances it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def test_transient_errors_are_retried_until_success() -> None:
    clock = FakeClock()
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise client_error("SlowDown", 503)
        return "ok"

    retries = []
    out = call_with_retry(
        fn, RetryPolicy(max_attempts=8, budget_s=60), random.Random(0),
        lambda e: classify_s3_error(e) == TRANSIENT,
        on_retry=lambda e, a, w: retries.append(a), sleep=clock.sleep, clock=clock,
    )
    assert out == "ok" and len(calls) == 4 and retries == [1, 2, 3]
    # full jitter: each sleep within [0, base * 2**(attempt-1)]
    for i, s in enumerate(clock.sleeps, start=1):
        assert 0 <= s <= 0.1 * 2 ** (i - 1)


def test_attempts_are_bounded() -> None:
    clock = FakeClock()

    def fn() -> None:
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    with pytest.raises(RetryExhausted) as info:
        call_with_retry(fn, RetryPolicy(max_attempts=3, budget_s=1e9), random.Random(0),
                        lambda e: True, sleep=clock.sleep, clock=clock)
    assert info.value.attempts == 3
    assert isinstance(info.value.last, botocore.exceptions.EndpointConnectionError)


def test_budget_is_bounded_in_wall_time() -> None:
    clock = FakeClock()

    def fn() -> None:
        clock.now += 0.5  # each attempt takes half a second
        raise client_error("InternalError", 500)

    with pytest.raises(RetryExhausted) as info:
        call_with_retry(fn, RetryPolicy(max_attempts=10_000, budget_s=5.0, base_s=1.0, cap_s=2.0),
                        random.Random(0), lambda e: True, sleep=clock.sleep, clock=clock)
    # the last attempt starts by the deadline, so the total is budget + one attempt at most
    assert clock.now <= 5.0 + 0.5
    assert info.value.attempts > 2


def test_non_transient_errors_propagate_at_once() -> None:
    calls = []

    def fn() -> None:
        calls.append(1)
        raise client_error("AccessDenied", 403)

    with pytest.raises(botocore.exceptions.ClientError):
        call_with_retry(fn, RetryPolicy(), random.Random(0),
                        lambda e: classify_s3_error(e) == TRANSIENT, sleep=lambda s: None)
    assert calls == [1]


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("SlowDown", 503), TRANSIENT),
        (client_error("TooManyRequests", 429), TRANSIENT),
        (client_error("Whatever", 502), TRANSIENT),
        (client_error("InternalError", 500), TRANSIENT),
        (client_error("NoSuchKey", 404), MISSING),
        (client_error("404", 404), MISSING),
        (client_error("NoSuchBucket", 404), PERMANENT),
        (client_error("AccessDenied", 403), PERMANENT),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), TRANSIENT),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), TRANSIENT),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), TRANSIENT),
        (ConnectionResetError(), TRANSIENT),
        (ValueError("bug"), PERMANENT),
    ],
)
def test_classification(exc: BaseException, kind: str) -> None:
    assert classify_s3_error(exc) == kind


def test_error_code_names_the_failure() -> None:
    assert error_code(client_error("SlowDown", 503)) == "SlowDown"
    assert error_code(ConnectionResetError()) == "ConnectionResetError"


def test_rate_limited_logger_suppresses_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = RateLimitedLogger(logging.getLogger("seer.test.ratelimit"), interval_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="seer.test.ratelimit"):
        assert log.warning("a", "first %d", 1)
        assert not log.warning("a", "again")
        assert not log.warning("a", "again")
        assert log.warning("b", "other reason")  # reasons are independent
        assert log.suppressed("a") == 2
        clock.now = 10.5
        assert log.warning("a", "later %s", "x")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "first 1"
    assert messages[1] == "other reason"
    assert messages[2].startswith("later x (2 similar suppressed in the last 10s)")
    assert len(messages) == 3
