"""Shared fixtures: a real S3-compatible server (moto_server) and a fault-injecting proxy.

Use them from any test:

- ``aws_test_env`` (session): dummy credentials (``testing``), region ``us-east-1``, the EC2
  metadata lookup disabled, the user's ``~/.aws`` files and endpoint variables hidden. Every
  S3 fixture depends on it; it is undone at the end of the session.
- ``s3_server`` (session): a :class:`tests.s3server.MotoServer` on 127.0.0.1; use its
  ``endpoint_url``. Shared by the whole session: never stop or restart it in a test (use
  ``fresh_s3_server`` for that).
- ``s3_client`` (session): a boto3 S3 client for ``s3_server`` (path-style addressing).
- ``s3_bucket`` (function): a new, empty bucket on ``s3_server``; its name is yielded, and the
  bucket is emptied and deleted afterwards.
- ``fault_proxy`` (function): a :class:`tests.s3server.FaultProxy` in front of ``s3_server``;
  point the code under test at ``fault_proxy.endpoint_url`` and inject 503/500/drops/delays.
- ``fresh_s3_server`` (function): a private moto_server that a test may stop and restart
  (``restart()`` keeps the port, loses all state).

Autouse: ``_one_torch_thread`` (session) runs the whole session with one torch intra-op thread.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.s3server import FaultProxy, MotoServer, empty_bucket, make_client

_AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    # Never read the developer's real profiles or credentials.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_AWS_HIDDEN = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "SEER_S3_ENDPOINT_URL")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for the whole session, the old count restored at the end.

    The tests use tiny models on tiny tensors, on CI machines of two cores shared with Ray
    workers and moto servers: a second OpenMP thread there buys nothing and its spin-waiting
    made small-model tests up to 50x slower. A test that measures threading sets its own count
    and restores it. (It does not reach Ray workers: they are other processes.)
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def aws_test_env() -> Iterator[dict[str, str]]:
    """Dummy AWS credentials and an isolated AWS configuration, for the session."""
    mp = pytest.MonkeyPatch()
    for name in _AWS_HIDDEN:
        mp.delenv(name, raising=False)
    for name, value in _AWS_TEST_ENV.items():
        mp.setenv(name, value)
    try:
        yield dict(_AWS_TEST_ENV)
    finally:
        mp.undo()


@pytest.fixture(scope="session")
def s3_server(aws_test_env: dict[str, str]) -> Iterator[MotoServer]:
    """One moto_server for the session (do not restart it; see ``fresh_s3_server``)."""
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_client(s3_server: MotoServer) -> Iterator[Any]:
    """A boto3 S3 client for ``s3_server``."""
    client = make_client(s3_server.endpoint_url)
    yield client
    client.close()


@pytest.fixture
def s3_bucket(s3_client: Any) -> Iterator[str]:
    """A fresh empty bucket (unique name), removed after the test."""
    name = f"seer-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        empty_bucket(s3_client, name, delete=True)


@pytest.fixture
def fault_proxy(s3_server: MotoServer) -> Iterator[FaultProxy]:
    """A fault-injecting HTTP proxy in front of ``s3_server`` (forwards cleanly by default)."""
    proxy = FaultProxy(s3_server.endpoint_url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def fresh_s3_server(aws_test_env: dict[str, str]) -> Iterator[MotoServer]:
    """A private moto_server the test may stop/restart at will; stopped afterwards."""
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def no_leaked_refreshers() -> Iterator[None]:
    """Fails a test that leaves a feed refresher thread running (threads already running before
    it, such as a process-wide cached feed of an earlier test, are not its business)."""
    from tests.waiting import refresher_threads, wait_until

    before = refresher_threads()
    yield
    assert wait_until(lambda: not (refresher_threads() - before), 5.0), (
        "a feed refresher thread outlived its test"
    )
