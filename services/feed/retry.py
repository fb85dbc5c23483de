"""Bounded retries with exponential backoff and full jitter, and the S3 error taxonomy.

Why our own loop rather than botocore's: botocore retries a handful of times with its own
budget, then raises; a store outage of a minute would then surface as a crash in the ingest
stage. We turn botocore's retries down to (almost) nothing and govern every attempt here, with a
wall-clock budget, so a fetch during an outage blocks for a bounded time and then fails *that
object* (the stream goes on), never the process.

Full jitter (sleep uniformly in ``[0, min(cap, base * 2**attempt)]``) because many ingest actors
hit the same store: synchronised retries after a throttling burst would re-create the burst.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import botocore.exceptions

T = TypeVar("T")

#: S3 error codes that mean "try again later", not "this request is wrong".
TRANSIENT_CODES: frozenset[str] = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "BandwidthLimitExceeded",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "IDPCommunicationError",
    }
)

#: S3 error codes that mean the object is not there (any more).
MISSING_CODES: frozenset[str] = frozenset({"NoSuchKey", "404", "NotFound"})

TRANSIENT = "transient"
MISSING = "missing"
PERMANENT = "permanent"


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError (``"SlowDown"``, ``"404"``), else the class name.

    Used in messages and metric labels: it names the failure without ever carrying request
    headers, URLs with signatures, or credentials.
    """
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return type(exc).__name__


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a ClientError, when botocore recorded one."""
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    return None


def classify_s3_error(exc: BaseException) -> str:
    """Sorts an exception from a boto3 call into TRANSIENT, MISSING or PERMANENT.

    Anything on the network path (refused, reset, timed out, truncated body) is transient: those
    are exactly the symptoms of a store restarting or a load balancer shedding load. 4xx other
    than 404/408/429 are permanent: retrying a denied or malformed request only wastes budget.
    """
    if isinstance(exc, botocore.exceptions.ClientError):
        code = error_code(exc)
        status = http_status(exc)
        if code in MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
            return MISSING
        if code in TRANSIENT_CODES or status in (408, 429) or (status or 0) >= 500:
            return TRANSIENT
        return PERMANENT
    if isinstance(
        exc,
        botocore.exceptions.ConnectionError  # refused, connect timeout, EndpointConnectionError
        | botocore.exceptions.HTTPClientError  # reset, read timeout, body streaming errors
        | botocore.exceptions.IncompleteReadError,
    ):
        return TRANSIENT
    if isinstance(exc, OSError | TimeoutError):  # raw socket errors that slip past botocore
        return TRANSIENT
    # urllib3 errors surface unwrapped from StreamingBody.read() on some paths.
    module = type(exc).__module__ or ""
    if module.startswith("urllib3"):
        return TRANSIENT
    return PERMANENT


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry one operation.

    Both limits apply: whichever is hit first ends the retries. ``budget_s`` bounds wall time
    spent *sleeping and starting attempts*; an attempt already running is bounded by the client's
    own connect/read timeouts, so the worst case is ``budget_s`` plus one attempt's timeout.
    """

    max_attempts: int = 8
    budget_s: float = 120.0
    base_s: float = 0.1
    cap_s: float = 10.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter delay before retry number ``attempt`` (1 = the first retry)."""
        ceiling = min(self.cap_s, self.base_s * (2 ** max(0, attempt - 1)))
        return rng.uniform(0.0, ceiling)


class RetryExhausted(Exception):
    """Raised by :func:`call_with_retry` when the budget or the attempt count is spent."""

    def __init__(self, last: BaseException, attempts: int, elapsed_s: float) -> None:
        super().__init__(f"gave up after {attempts} attempts in {elapsed_s:.1f}s")
        self.last = last
        self.attempts = attempts
        self.elapsed_s = elapsed_s


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    rng: random.Random,
    is_transient: Callable[[BaseException], bool],
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Calls ``fn`` until it succeeds, a non-transient error escapes, or the policy is spent.

    Non-transient exceptions propagate unchanged (the caller maps them); exhaustion raises
    :class:`RetryExhausted` carrying the last transient error. Backoff sleeps are clipped to the
    budget, so the call never sleeps past the deadline; the last attempt starts at the latest at
    the deadline.
    """
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            elapsed = clock() - start
            if attempt >= policy.max_attempts:
                raise RetryExhausted(exc, attempt, elapsed) from exc
            wait = policy.delay(attempt, rng)
            remaining = policy.budget_s - elapsed
            if remaining <= 0:
                raise RetryExhausted(exc, attempt, elapsed) from exc
            wait = min(wait, remaining)
            if on_retry is not None:
                on_retry(exc, attempt, wait)
            sleep(wait)
