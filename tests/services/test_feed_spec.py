"""FeedSpec: validation, kind detection, pickling, endpoint resolution."""

from __future__ import annotations

import pickle

import pytest

from services.feed import DEFAULT_IMAGE_EXTENSIONS, FeedSpec, open_feed
from services.feed.directory import DirectoryFeed


def test_spec_pickles_and_compares_equal() -> None:
    spec = FeedSpec("s3://bucket/images/", endpoint_url="http://127.0.0.1:9000", pool_size=10)
    clone = pickle.loads(pickle.dumps(spec))
    assert clone == spec
    assert clone.extensions == DEFAULT_IMAGE_EXTENSIONS


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("s3://bucket/prefix", "s3"),
        ("s3://bucket/lists/all.parquet", "manifest"),
        ("/data/list.TXT", "manifest"),
        ("file:///data/list.csv", "manifest"),
        ("/data/images", "directory"),
        ("file:///data/images", "directory"),
        ("relative/dir", "directory"),
    ],
)
def test_auto_kind(uri: str, kind: str) -> None:
    assert FeedSpec(uri).resolved_kind() == kind


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"uri": ""}, "uri"),
        ({"uri": "/x", "kind": "ftp"}, "kind"),
        ({"uri": "/x", "kind": "s3"}, "uri"),
        ({"uri": "s3://b/x", "kind": "directory"}, "uri"),
        ({"uri": "s3:///nobucket"}, "uri"),
        ({"uri": "/x", "pool_size": 0}, "pool_size"),
        ({"uri": "/x", "pool_size": 2.5}, "pool_size"),
        ({"uri": "/x", "refresh_seconds": 0}, "refresh_seconds"),
        ({"uri": "/x", "fetch_timeout_s": -1}, "fetch_timeout_s"),
        ({"uri": "/x", "retry_budget_s": -1}, "retry_budget_s"),
        ({"uri": "/x", "max_attempts": 0}, "max_attempts"),
        ({"uri": "/x", "manifest_column": ""}, "manifest_column"),
        ({"uri": "/x", "extensions": "jpg"}, "extensions"),
        ({"uri": "/x", "extensions": ("",)}, "extensions"),
        ({"uri": "/x", "endpoint_url": "minio:9000"}, "endpoint_url"),
    ],
)
def test_invalid_fields_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        FeedSpec(**kwargs)


def test_kind_error_lists_allowed_values() -> None:
    with pytest.raises(ValueError, match="auto, directory, s3, manifest"):
        FeedSpec("/x", kind="gcs")


def test_endpoint_with_credentials_is_rejected_without_echoing_them() -> None:
    with pytest.raises(ValueError) as info:
        FeedSpec("s3://b/p", endpoint_url="http://AKIAXXX:hunter2@minio:9000")
    assert "hunter2" not in str(info.value)
    assert "AKIAXXX" not in str(info.value)


def test_extensions_are_normalised() -> None:
    spec = FeedSpec("/x", extensions=["JPG", ".Png", "jpg"])  # type: ignore[arg-type]
    assert spec.extensions == (".jpg", ".png")
    assert spec.accepts("a/B.PNG")
    assert not spec.accepts("a/b.gif")
    assert not spec.accepts("dir.jpg/")
    assert FeedSpec("/x", extensions=()).accepts("anything")


def test_endpoint_falls_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The order of every seer S3 client (tests/services/test_s3_endpoint.py has them all)."""
    for name in ("SEER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    assert FeedSpec("s3://b/p").resolved_endpoint() == "http://127.0.0.1:2"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:4")
    assert FeedSpec("s3://b/p").resolved_endpoint() == "http://127.0.0.1:4"
    monkeypatch.setenv("SEER_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    assert FeedSpec("s3://b/p").resolved_endpoint() == "http://127.0.0.1:1"
    spec = FeedSpec("s3://b/p", endpoint_url="http://127.0.0.1:3")
    assert spec.resolved_endpoint() == "http://127.0.0.1:3"


def test_open_feed_accepts_uri_or_spec(tmp_path) -> None:
    feed = open_feed(str(tmp_path), pool_size=7)
    try:
        assert isinstance(feed, DirectoryFeed)
        assert feed.spec.pool_size == 7
    finally:
        feed.close()
    feed = open_feed(FeedSpec(str(tmp_path)), refresh_seconds=5.0)
    try:
        assert feed.spec.refresh_seconds == 5.0
    finally:
        feed.close()
