"""The one S3 layer (services.s3): clients with botocore's retries, the body-read retry policy,
the error helpers; and the rate-limited logger. Nothing is contacted."""

from __future__ import annotations

import logging
import random

import botocore.exceptions
import pytest

from services.feed import FeedSpec, open_feed
from services.labelled.store import S3Store
from services.ratelimit import RateLimitedLogger
from services.s3 import (
    BodyReadError,
    RetryExhausted,
    RetryPolicy,
    attempts,
    call_with_retry,
    error_code,
    is_missing,
    is_transient,
)


def max_calls(policy: RetryPolicy) -> int:
    """The most calls a budget-bounded read makes: retries stop once the floors of the sleeps
    so far reach the budget, and the last call starts by the deadline."""
    calls, slept = 1, 0.0
    while slept < policy.budget_s:
        slept += policy.step(calls) / 2
        calls += 1
    return calls


def transient(exc: BaseException) -> bool:
    """What the generic loop tests below treat as transient (the loop takes any predicate)."""
    return error_code(exc) in {"SlowDown", "InternalError", "EndpointConnectionError"}


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
        transient,
        on_retry=lambda e, a, w: retries.append(a), sleep=clock.sleep, clock=clock,
    )
    assert out == "ok" and len(calls) == 4 and retries == [1, 2, 3]
    # jitter in the upper half of each step: within [step / 2, step], step = base * 2**(n-1)
    for i, s in enumerate(clock.sleeps, start=1):
        assert 0.1 * 2 ** (i - 1) / 2 <= s <= 0.1 * 2 ** (i - 1)


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


def test_an_s3_read_is_ended_by_the_budget_alone_in_a_bounded_number_of_calls() -> None:
    """``capped=False`` (get_bytes: botocore already spent max_attempts requests on each call):
    an outage is ridden out for the whole budget, not for max_attempts calls, and the backoff's
    floor bounds the calls (max_calls), however the jitter falls."""
    for seed in range(20):
        clock = FakeClock()

        def fn() -> None:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

        policy = RetryPolicy(max_attempts=2, budget_s=30.0)
        with pytest.raises(RetryExhausted) as info:
            call_with_retry(fn, policy, random.Random(seed), is_transient, sleep=clock.sleep,
                            clock=clock, capped=False)
        assert clock.now == pytest.approx(30.0)  # slept to the deadline, then one last call
        assert 2 < info.value.attempts <= max_calls(policy) == 13


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("", 502), True),
        (client_error("TooManyRequests", 429), True),
        (client_error("RequestTimeout", 400), True),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), True),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), True),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), True),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), True),
        (BodyReadError("read"), True),
        (client_error("NoSuchKey", 404), False),
        (client_error("NoSuchBucket", 404), False),
        (client_error("AccessDenied", 403), False),
        (client_error("InvalidRange", 416), False),
        (ValueError("not S3"), False),
    ],
)
def test_transient_errors_are_told_apart(exc: BaseException, transient: bool) -> None:
    """What get_bytes calls again once botocore gave up: never a missing object or a refusal."""
    assert is_transient(exc) is transient


def test_non_transient_errors_propagate_at_once() -> None:
    calls = []

    def fn() -> None:
        calls.append(1)
        raise client_error("AccessDenied", 403)

    with pytest.raises(botocore.exceptions.ClientError):
        call_with_retry(fn, RetryPolicy(), random.Random(0),
                        transient, sleep=lambda s: None)
    assert calls == [1]


@pytest.mark.parametrize(
    ("exc", "missing"),
    [
        (client_error("NoSuchKey", 404), True),
        (client_error("404", 404), True),
        (client_error("NoSuchBucket", 404), False),
        (client_error("AccessDenied", 403), False),
        (client_error("SlowDown", 503), False),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), False),
    ],
)
def test_missing_objects_are_told_apart(exc: BaseException, missing: bool) -> None:
    assert is_missing(exc) is missing


def test_attempts_counts_botocore_retries() -> None:
    exc = client_error("InternalError", 500)
    exc.response["ResponseMetadata"]["RetryAttempts"] = 3
    assert attempts(exc) == 4
    assert attempts({"ResponseMetadata": {"RetryAttempts": 0}}) == 1
    assert attempts(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x")) == 1


@pytest.mark.parametrize("mode", [None, "standard", "adaptive", "legacy"])
def test_every_client_has_botocore_retries_with_the_configured_attempts(
        mode: str | None, aws_test_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls are retried by botocore (standard, or adaptive on request; never legacy, which
    misses SlowDown), with the caller's attempt count, the first attempt included. On the old
    code the clients had ``total_max_attempts == 1`` (seer's own loop did the retries)."""
    if mode is None:
        monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    else:
        monkeypatch.setenv("AWS_RETRY_MODE", mode)
    want = "adaptive" if mode == "adaptive" else "standard"
    with open_feed(FeedSpec("s3://bucket/images/", endpoint_url="http://127.0.0.1:9",
                            max_attempts=5)) as feed:
        client = feed.s3.client()
        assert client.meta.config.retries == {"mode": want, "total_max_attempts": 5}
    store = S3Store("http://127.0.0.1:9", RetryPolicy(max_attempts=4))
    assert store.client().meta.config.retries == {"mode": want, "total_max_attempts": 4}
    store.close()


def test_a_failed_body_read_is_retried_and_named_by_its_cause() -> None:
    calls = []

    def fn() -> bytes:
        calls.append(1)
        if len(calls) < 3:
            try:
                raise ConnectionResetError("reset while reading")
            except ConnectionResetError as exc:
                raise BodyReadError("read") from exc
        return b"ok"

    assert call_with_retry(fn, RetryPolicy(), random.Random(0), sleep=lambda s: None) == b"ok"
    with pytest.raises(RetryExhausted) as info:
        calls.clear()
        call_with_retry(lambda: fn() and fn(), RetryPolicy(max_attempts=1), random.Random(0))
    assert error_code(info.value.last) == "ConnectionResetError"


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
        clock.now = 10.5
        assert log.warning("a", "later %s", "x")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "first 1"
    assert messages[1] == "other reason"
    assert messages[2].startswith("later x (2 similar suppressed in the last 10s)")
    assert len(messages) == 3
