"""What every feed shares below the pool: the spec that travels and the errors a feed raises. The
interface and pool machinery are ``services.feed.pooled``; ``services.feed.open`` picks the
concrete feed for a spec, so this module imports none of them.

A :class:`FeedSpec` crosses process boundaries (Ray read tasks, actors), so it is a frozen,
picklable value; the live feed (threads, sockets) is opened in each process, and its
background refresher starts on first use, so opening a feed is cheap and a process that only
fetches never lists.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from seer_core.config.endpoints import credentials_message, has_credentials
from services.s3 import s3_endpoint

logger = logging.getLogger("seer.feed")

KINDS: tuple[str, ...] = ("auto", "directory", "s3", "manifest", "shards")
MANIFEST_SUFFIXES: tuple[str, ...] = (".parquet", ".txt", ".csv")
#: Names ``auto`` takes for a single shard (a lone ``.parquet`` stays a key manifest).
TAR_SHARD_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz")
#: Globs ``auto`` takes for shard tables and tars (``*`` in the last path segment only).
SHARD_GLOB_SUFFIXES: tuple[str, ...] = (*TAR_SHARD_SUFFIXES, ".parquet")
_BRACE_GROUP = re.compile(r"\{[^{}]*\}")
DEFAULT_IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif",
                                             ".tif", ".tiff")


class FeedError(Exception):
    """Base of every error a feed raises on purpose."""


class FeedEmpty(FeedError):
    """No key became available within the wait: the source is empty, unreachable or misnamed."""


class ObjectVanished(FeedError):
    """The sampled object no longer exists (deleted after it was listed). Skip it."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object vanished: {key}")
        self.key = key


class FetchFailed(FeedError):
    """The object could not be read after the retries (services.s3), or was refused for good.

    ``reason`` is a short code (``"SlowDown"``, ``"EndpointConnectionError"``, ``"AccessDenied"``)
    fit for a metric label; the message never carries credentials or signed URLs.
    """

    def __init__(self, key: str, reason: str, attempts: int, elapsed_s: float) -> None:
        super().__init__(
            f"fetch failed: {key}: {reason} after {attempts} attempt(s) in {elapsed_s:.1f}s"
        )
        self.key = key
        self.reason = reason
        self.attempts = attempts
        self.elapsed_s = elapsed_s


class ObjectTooLarge(FeedError):
    """The object is larger than the caller's limit; found from its size, before its bytes are
    read, so a multi-gigabyte object never lands in memory."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(f"object too large: {key}: {size} bytes > {limit}")
        self.key = key
        self.size = size
        self.limit = limit


class FeedClosed(FeedError):
    """Raised inside a feed's own waits once ``close()`` was called."""


def _normalise_extensions(exts: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for ext in exts:
        if not isinstance(ext, str) or not ext.strip(".").strip():
            raise ValueError(f"extensions: each entry must be a non-empty string, got {ext!r}")
        e = ext.strip().lower()
        out.append(e if e.startswith(".") else "." + e)
    return tuple(dict.fromkeys(out))


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True)
class FeedSpec:
    """Where images come from, and how hard to try. Picklable; ``open_feed(spec)`` in each process.

    ``kind="auto"``: shards (``services.feed.shards.source``) for a URI holding a ``{a..b}`` /
    ``{x,y}`` brace group, ending in ``.tar``/``.tar.gz``/``.tgz``, or whose last segment is a glob
    ending in one of those or ``.parquet`` (``prefix/*.parquet``); else a URI whose path ends in
    ``.parquet``/``.txt``/``.csv`` is a manifest (local or ``s3://``), another ``s3://`` URI a
    bucket prefix, anything else a directory. A lone ``.parquet`` keeps its older meaning (a key
    manifest): a Parquet image table is named by a glob, a pattern or ``kind="shards"``, which
    also takes a folder or prefix of shards and a ``.txt`` list of shard URIs.
    ``shuffle_buffer``, ``images_per_shard_visit`` and ``image_column`` apply to shards only.
    ``endpoint_url`` falls back to the environment in the process that opens (``services.s3``);
    credentials are never part of a spec. ``idle_stop_s``: a feed not used for that long stops
    listing until its next sample (keeping its pool), so a process that no longer reads does not
    list the store for ever; 15 min, so that a stream between passes or waiting on a checkpoint
    never pays for a stale pool.
    """

    uri: str
    kind: str = "auto"
    endpoint_url: str | None = None
    region: str | None = None
    pool_size: int = 100_000
    refresh_seconds: float = 300.0
    manifest_column: str = "key"
    manifest_base: str | None = None
    extensions: tuple[str, ...] = DEFAULT_IMAGE_EXTENSIONS
    fetch_timeout_s: float = 30.0
    retry_budget_s: float = 120.0
    max_attempts: int = 8
    idle_stop_s: float = 900.0
    shuffle_buffer: int = 256
    images_per_shard_visit: int | None = None
    image_column: str | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.uri, str) and bool(self.uri.strip()),
                 f"uri: must be a non-empty string, got {self.uri!r}")
        _require(self.kind in KINDS, f"kind: must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind == "s3":
            _require(self.uri.startswith("s3://"), f"uri: kind 's3' needs s3://bucket[/prefix], "
                     f"got {self.uri!r}")
        if self.kind == "directory":
            _require(not self.uri.startswith("s3://"), "uri: kind 'directory' needs a local path "
                     f"or file:// URI, got {self.uri!r}")
        if self.uri.startswith("s3://"):
            _require(bool(urlsplit(self.uri).netloc), f"uri: no bucket in {self.uri!r}")
        if self.endpoint_url is not None:
            _require(isinstance(self.endpoint_url, str) and self.endpoint_url.startswith(
                ("http://", "https://")), "endpoint_url: must be an http:// or https:// URL")
            # Never echo the value: a URL with user:password@ is exactly what must not leak.
            _require(not has_credentials(self.endpoint_url), credentials_message("endpoint_url"))
        # (name, an int >= 1 (else a number), zero allowed (else > 0))
        for name, integer, zero in (("pool_size", 1, 0), ("max_attempts", 1, 0),
                                    ("refresh_seconds", 0, 0), ("idle_stop_s", 0, 0),
                                    ("fetch_timeout_s", 0, 0), ("retry_budget_s", 0, 1)):
            value = getattr(self, name)
            ok = isinstance(value, int if integer else int | float) and not isinstance(value, bool)
            ok = ok and (value >= 1 if integer else value >= 0 if zero else value > 0)
            what = "an int >= 1" if integer else f"a number {'>=' if zero else '>'} 0"
            _require(ok, f"{name}: must be {what}, got {value!r}")
        _require(isinstance(self.shuffle_buffer, int) and not isinstance(self.shuffle_buffer, bool)
                 and self.shuffle_buffer >= 0,
                 f"shuffle_buffer: must be an int >= 0, got {self.shuffle_buffer!r}")
        visit = self.images_per_shard_visit
        _require(visit is None or (isinstance(visit, int) and not isinstance(visit, bool)
                                   and visit >= 1),
                 f"images_per_shard_visit: must be None (the whole shard) or an int >= 1, "
                 f"got {visit!r}")
        _require(self.image_column is None or (isinstance(self.image_column, str)
                                               and bool(self.image_column)),
                 f"image_column: must be None or a non-empty string, got {self.image_column!r}")
        _require(isinstance(self.manifest_column, str) and bool(self.manifest_column),
                 f"manifest_column: must be a non-empty string, got {self.manifest_column!r}")
        if isinstance(self.extensions, str):
            raise ValueError("extensions: must be a tuple of strings such as ('.jpg', '.png'), "
                             f"not the string {self.extensions!r}")
        if self.kind in ("auto", "shards") and _BRACE_GROUP.search(self.uri):
            from services.feed.shards.names import check_shard_pattern

            try:
                check_shard_pattern(self.uri)
            except ValueError as exc:
                raise ValueError(f"uri: {exc}") from None
        # YAML hands over lists and mixed case; normalise so equality and pickling stay simple.
        object.__setattr__(self, "extensions", _normalise_extensions(self.extensions))

    def resolved_kind(self) -> str:
        """The concrete kind ``auto`` stands for (see the class docstring)."""
        if self.kind != "auto":
            return self.kind
        path = urlsplit(self.uri).path if "://" in self.uri else self.uri
        lower = path.lower()
        last = lower.rsplit("/", 1)[-1]
        if (_BRACE_GROUP.search(self.uri) or lower.endswith(TAR_SHARD_SUFFIXES)
                or ("*" in last and last.endswith(SHARD_GLOB_SUFFIXES))):
            return "shards"
        if lower.endswith(MANIFEST_SUFFIXES):
            return "manifest"
        if self.uri.startswith("s3://"):
            return "s3"
        return "directory"

    def resolved_endpoint(self) -> str | None:
        """The endpoint to use in this process: the spec's, else the environment's (the one
        resolver of every seer S3 client, so images and checkpoints go to the same store)."""
        return s3_endpoint(self.endpoint_url)

    def accepts(self, name: str) -> bool:
        """Whether a key or path has one of the wanted extensions (any, when none are set)."""
        if name.endswith("/"):
            return False  # "directory" marker objects
        return not self.extensions or name.lower().endswith(self.extensions)
