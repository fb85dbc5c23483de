"""seer's one S3 access layer: the endpoint, the clients, the errors and the one retry loop, for
the feed, the labelled set, the checkpoint store and the evaluator's results.

Endpoint, decided once: the configured value, then `SEER_S3_ENDPOINT_URL` (what the manifests
set; an AWS variable a base image exports for other tools must not override it), then
`AWS_ENDPOINT_URL_S3` and `AWS_ENDPOINT_URL` in botocore's own order, so that a boto3 client and
a pyarrow filesystem (which reads them differently, hence always passed explicitly) agree. An
endpoint with credentials in it is refused, naming the key or variable, never the value.

Retries, one policy (`RetryPolicy`: `feed.max_attempts`, `feed.retry_budget_s`) in two layers:
- inside each call, botocore's `standard` mode (`adaptive` when `AWS_RETRY_MODE=adaptive`) rides
  out short blips, at most `max_attempts` requests per call. Its per-client retry quota is spent
  within seconds of an outage; botocore then sends each call once.
- around each object read (`get_bytes`), seer calls again when botocore gave up on a transient
  error (`is_transient`) or the body broke off after the headers (which botocore never retries),
  with its own backoff, until `retry_budget_s` is spent. A store outage shorter than the budget
  thus costs no object, and with the quota left on (botocore has no supported switch) an outage
  costs each reader one request per backoff step: 64 ranks' readers do not hammer a store that
  is coming back. `call_with_retry` is the loop (also for local files on network mounts and the
  trainer's checkpoint store waits).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

import boto3
import botocore.config
import botocore.exceptions
import pyarrow.fs as pafs
from botocore import UNSIGNED

from seer_core.config.endpoints import credentials_message, has_credentials
from seer_core.config.schema import ConfigError

__all__ = ["ENDPOINT_ENV", "BodyReadError", "LazyClient", "RetryExhausted", "RetryPolicy",
           "call_with_retry", "error_code", "get_bytes", "is_missing", "is_transient",
           "make_client", "s3_endpoint"]

log = logging.getLogger("seer.s3")
T = TypeVar("T")

#: Environment variables read when nothing is configured, highest precedence first.
ENDPOINT_ENV: tuple[str, ...] = ("SEER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                                 "AWS_ENDPOINT_URL")

#: S3 error codes that mean the object is not there (any more).
MISSING_CODES: frozenset[str] = frozenset({"NoSuchKey", "404", "NotFound"})

#: Error codes worth another call once botocore has given up, whatever their HTTP status
#: (throttling, and timeouts S3 reports as a 400), besides any 5xx and 429.
TRANSIENT_CODES: frozenset[str] = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "RequestLimitExceeded", "TooManyRequests",
    "TooManyRequestsException", "BandwidthLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "PriorRequestNotComplete", "InternalError", "ServiceUnavailable",
})


def s3_endpoint(configured: str | None, *, key: str = "endpoint_url") -> str | None:
    """The endpoint in the order above (None: AWS's own), resolved in the process that opens
    the client (Ray workers get the variables forwarded: services.trainer.build). ConfigError
    (`seer` exits 2) naming `key` or the variable if it carries credentials."""
    if configured:
        value, source = configured, key
    else:
        source = next((name for name in ENDPOINT_ENV if os.environ.get(name)), "")
        value = os.environ[source] if source else None
    if value and has_credentials(value):
        raise ConfigError(credentials_message(source))
    return value


def make_client(endpoint: str | None, *, max_attempts: int, region: str | None = None,
                connect_timeout: float = 10.0, read_timeout: float = 60.0,
                max_pool_connections: int = 32, what: str = "s3") -> Any:
    """A boto3 S3 client as every seer component wants one: botocore retries each call,
    `max_attempts` requests in all, in `standard` mode or `adaptive` when `AWS_RETRY_MODE` asks
    (never `legacy`, whose error list misses S3's `SlowDown` and 5xx without a known code);
    unsigned requests (public buckets) when the credential chain has nothing; path-style
    addressing on a custom endpoint (MinIO, Ceph rarely have wildcard DNS)."""
    session = boto3.session.Session(region_name=region)
    extra: dict[str, Any] = {}
    if session.get_credentials() is None:
        log.info("%s: no AWS credentials found; using unsigned requests", what)
        extra["signature_version"] = UNSIGNED
    if endpoint:
        extra["s3"] = {"addressing_style": "path"}
    config = botocore.config.Config(
        retries={"mode": "adaptive" if os.environ.get("AWS_RETRY_MODE") == "adaptive"
                 else "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        max_pool_connections=max_pool_connections, **extra)
    return session.client("s3", endpoint_url=endpoint, config=config)


class LazyClient:
    """A client built by ``build`` on the first call, in the process that uses it (one that
    never reads S3 never resolves an endpoint or credentials), then shared: boto3 clients are
    thread-safe. ``close()`` releases its connections; a later call builds a new one."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._client: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError (``"SlowDown"``, ``"404"``), else the class name (of
    the cause, for a BodyReadError). Used in messages and metric labels: it names the failure
    without ever carrying request headers, signed URLs or credentials."""
    if isinstance(exc, BodyReadError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code or status:
            return str(code or status)
    return type(exc).__name__


def is_missing(exc: BaseException) -> bool:
    """Whether a call failed because the object is not there (a missing bucket is not that)."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = error_code(exc)
    return code in MISSING_CODES or (status == 404 and code != "NoSuchBucket")


def is_transient(exc: BaseException) -> bool:
    """Whether a read is worth another call after botocore gave up: a body that broke off,
    a connection error or timeout (refused, reset, DNS, connect/read timeout), a 5xx, 429 or
    throttling answer. A missing object, a missing bucket, 403 and other 4xx are not: they will
    not change by asking again."""
    if isinstance(exc, BodyReadError | botocore.exceptions.HTTPClientError
                  | botocore.exceptions.ConnectionError):
        return True
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return ((isinstance(status, int) and (status >= 500 or status == 429))
            or error_code(exc) in TRANSIENT_CODES)


def attempts(reply: Any) -> int:
    """Requests botocore sent for one call (1 + its retries), from a response or a ClientError;
    1 when it did not say (a connection error after the last attempt)."""
    if isinstance(reply, botocore.exceptions.ClientError):
        reply = reply.response
    meta = reply.get("ResponseMetadata", {}) if isinstance(reply, dict) else {}
    return 1 + int(meta.get("RetryAttempts") or 0)


class BodyReadError(Exception):
    """Reading a response body failed (reset, timeout, truncated): retried by `call_with_retry`,
    as botocore does not retry once the headers have arrived. The error is its `__cause__`."""


def body_chunks(body: Any, size: int = 1 << 20) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(size)
    except Exception as exc:  # the consumer's own errors are raised outside this generator
        raise BodyReadError(error_code(exc)) from exc


@dataclass(frozen=True)
class RetryPolicy:
    """seer's one retry policy. ``max_attempts``: requests botocore may send per call, and calls
    `call_with_retry` makes when capped (local files, manifest downloads). ``budget_s``: the wall
    time of sleeping and starting calls (a running call is bounded by botocore's attempts and the
    client's timeouts); an S3 object read (`get_bytes`) is ended by it alone."""

    max_attempts: int = 8
    budget_s: float = 120.0
    base_s: float = 0.1
    cap_s: float = 10.0

    def step(self, attempt: int) -> float:
        """The exponential step before retry ``attempt`` (1 = the first retry)."""
        return min(self.cap_s, self.base_s * (2 ** max(0, attempt - 1)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Uniform in the upper half of the step: jitter spreads many readers of one store; the
        floor bounds how many calls fit in the budget, however the draws fall."""
        return rng.uniform(self.step(attempt) / 2, self.step(attempt))


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
    is_transient: Callable[[BaseException], bool] = lambda e: isinstance(e, BodyReadError),
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    *,
    capped: bool = True,
) -> T:
    """Calls ``fn`` until it succeeds, a non-transient error escapes (unchanged), or the policy
    is spent (RetryExhausted with the last error): its budget, and its ``max_attempts`` calls
    when ``capped`` (not for S3 calls, on which botocore already spent that many requests).
    Sleeps are clipped to the budget: the last call starts by the deadline."""
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
            remaining = policy.budget_s - elapsed
            if (capped and attempt >= policy.max_attempts) or remaining <= 0:
                raise RetryExhausted(exc, attempt, elapsed) from exc
            wait = min(policy.delay(attempt, rng), remaining)
            if on_retry is not None:
                on_retry(exc, attempt, wait)
            sleep(wait)


def get_bytes(client: Any, bucket: str, key: str, policy: RetryPolicy, rng: random.Random, *,
              max_bytes: int | None = None, too_large: Callable[[int], Exception] = ValueError,
              on_retry: Callable[[BaseException, int, float], None] | None = None,
              sleep: Callable[[float], None] = time.sleep) -> tuple[bytes, int]:
    """An object's bytes and the requests it took (botocore's retries included; a connection
    error counts one). When botocore gives up on a transient error or the body breaks off, the
    call is made again until ``policy.budget_s`` is spent: then RetryExhausted, whose
    ``attempts`` are the requests sent. Over ``max_bytes`` (from the headers):
    ``too_large(size)``, body unread. Other errors propagate (NoSuchKey, 403...)."""
    sent = [0]

    def attempt() -> bytes:
        try:
            response = client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            sent[0] += attempts(exc)
            raise
        sent[0] += attempts(response)
        body = response["Body"]
        try:
            size = response.get("ContentLength")
            if max_bytes is not None and size is not None and size > max_bytes:
                raise too_large(int(size))
            return b"".join(body_chunks(body))
        finally:
            body.close()

    try:
        data = call_with_retry(attempt, policy, rng, is_transient, on_retry, sleep, capped=False)
    except RetryExhausted as exc:
        raise RetryExhausted(exc.last, sent[0], exc.elapsed_s) from exc.last
    return data, sent[0]


def s3_filesystem(endpoint_url: str | None) -> Any:
    """A pyarrow S3 filesystem (checkpoints, results) on the same endpoint as every client; AWS
    SDK's standard retry strategy (3 attempts) retries its calls, region from the environment."""
    kwargs: dict[str, Any] = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
    endpoint = s3_endpoint(endpoint_url)
    if endpoint:
        ep = urlparse(endpoint)
        kwargs["endpoint_override"] = ep.netloc or ep.path
        kwargs["scheme"] = ep.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)
