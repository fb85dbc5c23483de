"""Images out of one shard: a WebDataset tar streamed member by member, or a Parquet image table
read row group by row group. Neither reader opens anything: it is handed a file object (a
streaming GET body, a :class:`~services.feed.shards.ranged.RangedReader`, a local file), so the
same code serves S3 and local paths, and no store client is imported here.

A reader never raises for bad input (DESIGN §3): every image member becomes a
:class:`ShardSample` with its bytes, or with no bytes and a *reason* the ingest stage counts in
``seer_ingest_failures_total``: ``too_large`` (a member over ``max_member_bytes``), ``not_image``
(a null Parquet cell), ``bad_shard`` (the shard itself is damaged: a truncated or corrupt tar, an
unreadable footer, a corrupt row group, no image column, no image at all), ``vanished`` /
``fetch_error`` (the store failed while the shard was being read). The good members read before
a failure are yielded first, and a corrupt Parquet row group costs only that group. Every shard
yields at least one sample, so a visit to a useless shard is counted rather than silent.
Whether the bytes decode is the ingest actor's business (``not_image``, ``corrupt``).
"""

from __future__ import annotations

import logging
import tarfile
import zlib
from collections.abc import Iterator
from typing import NamedTuple, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from services.feed.base import DEFAULT_IMAGE_EXTENSIONS, FeedError, ObjectVanished
from services.ratelimit import RateLimitedLogger

logger = logging.getLogger("seer.feed.shards")
log = RateLimitedLogger(logger, 30.0)

#: The reason for a shard that is itself damaged (one sample per failure, not per member lost).
BAD_SHARD = "bad_shard"

#: The reasons a shard reader or the shard visitor can give; all but ``bad_shard`` are already
#: among ``services.ingest.read.REASONS``, which gains ``bad_shard``.
SHARD_REASONS = ("vanished", "fetch_error", "too_large", "not_image", BAD_SHARD)

#: The image column of a Parquet table when ``feed.image_column`` is not set: Hugging Face
#: datasets name it ``image``; img2dataset's parquet output and webdataset-derived tables ``jpg``.
IMAGE_COLUMNS = ("image", "jpg")

#: Suffixes of the shard kinds (a compressed tar streams as well as a plain one).
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)

# Parquet cells are copied to Python bytes this many rows at a time: the row group is already in
# Arrow memory; a slice keeps the Python copy small instead of doubling the group.
_ROWS_PER_SLICE = 64


class ShardFile(Protocol):
    """What a reader needs of an opened shard: a streaming GET body, a local file, a
    RangedReader. A tar is only read forwards; a Parquet table must also seek (its footer is at
    the end), which pyarrow checks when it opens it."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class ShardSample(NamedTuple):
    """One image of a shard: ``data``, or ``None`` and a reason from :data:`SHARD_REASONS`.

    ``key`` names the shard and the member for the failure counters and logs:
    ``<shard>#<member name>`` in a tar, ``<shard>#<row group>:<row>`` in a Parquet table, the
    shard alone (or shard and row group) for a failure of the whole shard (or group).
    """

    key: str
    data: bytes | None
    reason: str = ""


def shard_format(name: str) -> str:
    """``"tar"`` or ``"parquet"`` from a shard's name; ValueError for anything else.

    The opener needs it before reading: a tar is streamed (one GET), a Parquet table needs a
    seekable reader (its footer is at the end).
    """
    lower = name.lower()
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise ValueError(f"not a shard (want {', '.join(TAR_SUFFIXES + PARQUET_SUFFIXES)}): {name!r}")


def store_failure(key: str, exc: BaseException) -> ShardSample:
    """The sample for a store error while reading (``vanished`` or ``fetch_error``), logged."""
    reason = "vanished" if isinstance(exc, ObjectVanished | FileNotFoundError) else "fetch_error"
    log.warning(reason, "shard %s: %s (%s)", key, reason, type(exc).__name__)
    return ShardSample(key, None, reason)


def bad_shard(key: str, detail: str) -> ShardSample:
    """The ``bad_shard`` sample for a damaged shard or row group, logged at a rate limit."""
    log.warning(BAD_SHARD, "shard %s: %s: %s", key, BAD_SHARD, detail)
    return ShardSample(key, None, BAD_SHARD)


class _EndAwareInfo(tarfile.TarInfo):
    """A TarInfo that notes the end-of-archive block on its archive.

    ``tarfile`` ends a stream quietly at a missing, truncated or garbled header past the first
    member, exactly as at the real end (a zero block), so a shard cut short would look whole.
    Seeing the zero block is what tells the two apart.
    """

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:
            if isinstance(archive, _ShardTar):
                archive.ended_cleanly = True
            raise


class _ShardTar(tarfile.TarFile):
    """A stream-mode TarFile that knows whether it saw the end-of-archive block."""

    tarinfo = _EndAwareInfo
    ended_cleanly = False


def iter_tar_samples(fileobj: ShardFile, shard: str,
                     extensions: tuple[str, ...] = DEFAULT_IMAGE_EXTENSIONS,
                     max_member_bytes: int | None = None) -> Iterator[ShardSample]:
    """The image members of a WebDataset tar, streamed: one forward pass, never a seek.

    Memory holds one member at a time (``tarfile`` mode ``r|*``, gzip included); a member over
    ``max_member_bytes`` is ``too_large`` and skipped by reading past it in blocks, never held.
    An image member is one whose name ends with one of ``extensions`` (the feed's image
    extensions); every other member (WebDataset's ``.json``/``.txt``/``.cls`` sidecars, or
    anything unknown) is skipped silently: a member with a non-image extension may be any
    metadata, so it is not a failed image, and a sample key whose only members are sidecars
    (img2dataset's record of a failed download) is not an image either. A tar with no image
    member at all yields one ``bad_shard`` (a wrong extension list shows in the counter instead
    of as a feed that never yields). A truncated or corrupt tar yields its good members, then one
    ``bad_shard``, and stops.
    """
    wanted = tuple(ext.lower() for ext in extensions)
    images, key = 0, shard  # key: what a failure is charged to (the member being read)
    try:
        with _ShardTar.open(fileobj=fileobj, mode="r|*") as tar:
            while (member := tar.next()) is not None:
                key = shard
                tar.members = []  # stream mode keeps every header it read: drop them
                if not member.isfile() or not member.name.lower().endswith(wanted):
                    continue
                key = f"{shard}#{member.name}"
                images += 1
                if max_member_bytes is not None and member.size > max_member_bytes:
                    log.warning("too_large", "skipping %s: too_large %d bytes > %d", key,
                                member.size, max_member_bytes)
                    yield ShardSample(key, None, "too_large")
                    continue
                body = tar.extractfile(member)
                assert body is not None  # a regular file always has a body
                yield ShardSample(key, body.read())
            ended, offset = tar.ended_cleanly, tar.offset
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        yield bad_shard(key, f"corrupt or truncated tar after {images} image(s): {exc}")
        return
    except Exception as exc:  # the store failed mid-stream (the client's own error): skip
        yield store_failure(key, exc)
        return
    if not ended:
        yield bad_shard(shard, f"truncated tar: no end-of-archive block at byte {offset}")
    elif images == 0:
        yield bad_shard(shard, f"no member ends with {', '.join(wanted)}")


def resolve_image_column(schema: pa.Schema, wanted: str | None) -> tuple[str, bool]:
    """The image column to read and whether it is a struct with a ``bytes`` field (the Hugging
    Face ``Image`` layout); ValueError naming the columns there are when none fits."""
    names = schema.names
    name = wanted if wanted is not None else next((c for c in IMAGE_COLUMNS if c in names), None)
    if name is None or name not in names:
        want = repr(wanted) if wanted is not None else " or ".join(map(repr, IMAGE_COLUMNS))
        raise ValueError(f"no image column {want} (columns: {', '.join(names)})")
    kind = schema.field(name).type
    if pa.types.is_struct(kind):
        index = kind.get_field_index("bytes")
        if index >= 0 and _is_binary(kind.field(index).type):
            return name, True
    elif _is_binary(kind):
        return name, False
    raise ValueError(f"image column {name!r} is {kind}, not binary or a struct with bytes")


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def iter_parquet_samples(fileobj: ShardFile, shard: str, image_column: str | None = None,
                         max_member_bytes: int | None = None) -> Iterator[ShardSample]:
    """The image cells of a Parquet table, one row group at a time, only the image column read.

    ``fileobj`` must be seekable (the footer is at the end: over S3, a RangedReader). Memory is
    bounded by one row group's image column. A cell is binary, or a struct whose ``bytes`` field
    is (Hugging Face ``datasets`` writes ``{bytes, path}``; only ``bytes`` is read). A null cell
    is ``not_image``; a row group that does not decode is one ``bad_shard`` and the next group is
    still read; an unreadable footer, a missing or non-binary image column, or a table with no
    rows is one ``bad_shard`` for the shard. Page checksums are verified where the writer stored
    them, so a flipped byte in an image is caught as a corrupt group rather than passed on.
    """
    try:
        table = pq.ParquetFile(fileobj, page_checksum_verification=True)
        column, struct = resolve_image_column(table.schema_arrow, image_column)
    except (FeedError, ConnectionError, TimeoutError) as exc:
        yield store_failure(shard, exc)
        return
    except Exception as exc:  # pyarrow raises OSError / ArrowInvalid for a damaged footer
        yield bad_shard(shard, f"unreadable parquet: {exc}")
        return
    if table.metadata.num_rows == 0:
        yield bad_shard(shard, "no rows")
        return
    for group in range(table.metadata.num_row_groups):
        try:
            read = table.read_row_group(group, columns=[f"{column}.bytes" if struct else column])
        except (FeedError, ConnectionError, TimeoutError) as exc:
            yield store_failure(f"{shard}#{group}", exc)
            return
        except Exception as exc:  # a corrupt page: this group only
            yield bad_shard(f"{shard}#{group}", f"corrupt row group: {exc}")
            continue
        row = 0
        for chunk in read.column(0).chunks:
            # flatten() applies the struct's own nulls to its field (field() would not).
            cells = chunk.flatten()[0] if struct else chunk
            for start in range(0, len(cells), _ROWS_PER_SLICE):
                for data in cells.slice(start, _ROWS_PER_SLICE).to_pylist():
                    yield _cell(f"{shard}#{group}:{row}", data, max_member_bytes)
                    row += 1


def _cell(key: str, data: bytes | None, max_bytes: int | None) -> ShardSample:
    if data is None:
        return ShardSample(key, None, "not_image")
    if max_bytes is not None and len(data) > max_bytes:
        log.warning("too_large", "skipping %s: too_large %d bytes > %d", key, len(data), max_bytes)
        return ShardSample(key, None, "too_large")
    return ShardSample(key, data)


def iter_shard_samples(fileobj: ShardFile, shard: str, *,
                       extensions: tuple[str, ...] = DEFAULT_IMAGE_EXTENSIONS,
                       image_column: str | None = None,
                       max_member_bytes: int | None = None) -> Iterator[ShardSample]:
    """The reader for ``shard``'s format (:func:`shard_format`), with the feed's settings."""
    if shard_format(shard) == "tar":
        return iter_tar_samples(fileobj, shard, extensions, max_member_bytes)
    return iter_parquet_samples(fileobj, shard, image_column, max_member_bytes)
