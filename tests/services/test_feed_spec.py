"""FeedSpec: validation, kind detection, pickling, endpoint resolution."""

from __future__ import annotations

import pickle

import pytest

from seer_core.config import ConfigError, load_config
from services.feed import DEFAULT_IMAGE_EXTENSIONS, FeedSpec, open_feed
from services.feed.directory import DirectoryFeed
from services.ingest.read import feed_spec


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
        # Shards: a brace pattern, a tar, a glob of tars or Parquet tables.
        ("s3://bucket/laion/{00000..41455}.tar", "shards"),
        ("/data/shards/{00000..00099}.parquet", "shards"),
        ("s3://bucket/laion/00000.tar", "shards"),
        ("/data/one.tar.gz", "shards"),
        ("/data/one.TGZ", "shards"),
        ("s3://bucket/tables/*.parquet", "shards"),
        ("runs/shards/*.tar", "shards"),
        # A lone .parquet keeps its meaning (a key manifest); a glob of anything else is not
        # a shard feed.
        ("s3://bucket/tables/part-0.parquet", "manifest"),
        ("/data/*.jpg", "directory"),
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
        ({"uri": "/x", "shuffle_buffer": -1}, "shuffle_buffer"),
        ({"uri": "/x", "shuffle_buffer": 1.5}, "shuffle_buffer"),
        ({"uri": "/x", "images_per_shard_visit": 0}, "images_per_shard_visit"),
        ({"uri": "/x", "images_per_shard_visit": True}, "images_per_shard_visit"),
        ({"uri": "/x", "image_column": ""}, "image_column"),
        ({"uri": "s3://b/{00010..00001}.tar"}, "uri"),
        ({"uri": "/d/{a}.tar", "kind": "shards"}, "uri"),
    ],
)
def test_invalid_fields_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        FeedSpec(**kwargs)


def test_kind_error_lists_allowed_values() -> None:
    with pytest.raises(ValueError, match="auto, directory, s3, manifest, shards"):
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


def test_shard_knobs_default_and_a_shard_spec_opens_no_key_feed() -> None:
    spec = FeedSpec("s3://b/{00000..00009}.tar")
    assert (spec.shuffle_buffer, spec.images_per_shard_visit, spec.image_column) == (256, None,
                                                                                     None)
    assert FeedSpec("/d", kind="shards", shuffle_buffer=0, images_per_shard_visit=1,
                    image_column="jpg").resolved_kind() == "shards"
    with pytest.raises(ValueError, match="shards"):
        open_feed(spec)


@pytest.mark.parametrize(("override", "fragment"), [
    ("feed.kind=gcs", "feed.kind: 'gcs' is not allowed; allowed values: auto, directory, s3, "
                      "manifest, shards"),
    ("feed.shuffle_buffer=-1", "feed.shuffle_buffer: -1 is too small; allowed: >= 0"),
    ("feed.shuffle_buffer=2.5", "feed.shuffle_buffer: 2.5 is not an integer"),
    ("feed.images_per_shard_visit=0", "feed.images_per_shard_visit: 0 is too small; "
                                      "allowed: >= 1"),
    ("feed.image_column=''", "feed.image_column: ''"),
])
def test_shard_config_keys_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("local", [override])
    assert fragment in str(info.value)


def test_config_shard_keys_reach_the_spec() -> None:
    cfg = load_config("local", ["feed.uri=s3://b/s/{0000..0009}.tar", "feed.shuffle_buffer=0",
                                "feed.images_per_shard_visit=5", "feed.image_column=jpg"])
    spec = feed_spec(cfg)
    assert spec.resolved_kind() == "shards"
    assert (spec.shuffle_buffer, spec.images_per_shard_visit, spec.image_column) == (0, 5, "jpg")
    default = feed_spec(load_config("local", ["feed.kind=shards", "feed.uri=/d"]))
    assert (default.kind, default.shuffle_buffer, default.images_per_shard_visit,
            default.image_column) == ("shards", 256, None, None)
