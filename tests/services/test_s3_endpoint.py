"""One S3 endpoint resolver for every client: the feed, checkpoints, the labelled set, the
evaluator's results. Pure resolution, no server: nothing is contacted."""

from __future__ import annotations

import itertools

import pytest

from services.evaluator.results import ResultsFile
from services.feed import FeedSpec
from services.labelled.store import S3Store
from services.storage import resolve_storage, s3_endpoint

#: Highest precedence first: seer's own variable, then botocore's service-specific one, then
#: botocore's generic one (botocore reads AWS_ENDPOINT_URL_S3 before AWS_ENDPOINT_URL).
ORDER = ("SEER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
URLS = {"SEER_S3_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:2",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:3"}


def _storage_endpoint(storage_uri: str) -> str | None:
    kwargs = resolve_storage(storage_uri, "run").filesystem.__reduce__()[1][0]
    return f"{kwargs['scheme']}://{kwargs['endpoint_override']}" if kwargs[
        "endpoint_override"] else None


def _results_endpoint() -> str | None:
    fs = ResultsFile("s3://bucket/eval/results.jsonl")._store.filesystem
    kwargs = fs.__reduce__()[1][0]
    return f"{kwargs['scheme']}://{kwargs['endpoint_override']}" if kwargs[
        "endpoint_override"] else None


@pytest.mark.parametrize("present", [
    combo for n in range(len(ORDER) + 1) for combo in itertools.combinations(ORDER, n)])
def test_every_client_resolves_the_same_endpoint(present: tuple[str, ...],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ORDER:
        monkeypatch.delenv(name, raising=False)
    for name in present:
        monkeypatch.setenv(name, URLS[name])
    expected = next((URLS[name] for name in ORDER if name in present), None)
    assert s3_endpoint(None) == expected
    assert FeedSpec("s3://bucket/images/").resolved_endpoint() == expected
    assert S3Store(None).endpoint == expected
    assert _storage_endpoint("s3://bucket/runs") == expected
    assert _results_endpoint() == expected
    # A configured value wins everywhere.
    configured = "http://127.0.0.1:9"
    assert FeedSpec("s3://b/", endpoint_url=configured).resolved_endpoint() == configured
    assert S3Store(configured).endpoint == configured
    assert s3_endpoint(configured) == configured


@pytest.mark.parametrize("name", ORDER)
def test_an_endpoint_variable_with_credentials_is_refused_naming_the_variable(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config check cannot see the environment; the resolver refuses the same URLs, so no
    client, log line or error message ever holds a user:password@ endpoint."""
    for other in ORDER:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, "http://AKIAXXX:s3cr3tpw@127.0.0.1:9")
    for resolve in (lambda: s3_endpoint(None),
                    lambda: FeedSpec("s3://bucket/images/").resolved_endpoint(),
                    lambda: S3Store(None),
                    lambda: resolve_storage("s3://bucket/runs", "run")):
        with pytest.raises(ValueError) as info:
            resolve()
        assert f"{name}: must not carry credentials" in str(info.value)
        assert "s3cr3tpw" not in str(info.value) and "AKIAXXX" not in str(info.value)
