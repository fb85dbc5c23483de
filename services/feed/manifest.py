"""A manifest as a feed: a Parquet, CSV or text file listing the objects (local or on S3), the way
large image collections are handed over. The manifest is the authority on what exists, so the
``extensions`` filter does not apply. Entries are ``s3://`` or ``file://`` URIs, absolute paths,
or names relative to ``manifest_base``, else to the manifest's bucket root (S3 inventories list
bucket keys) or its own directory.

The pool is a uniform random subset of the entries, re-read when the manifest changes (mtime,
size and inode; S3 ETag) and, when it holds more entries than the pool, re-drawn every refresh
so the pool moves through it: one read per refresh per process, so give large manifests a long
``refresh_seconds``.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import os
import tempfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from services.feed.base import FeedError, FeedSpec
from services.feed.directory import local_path, read_local, reservoir
from services.feed.pooled import PooledFeed
from services.feed.s3 import S3Access, parse_s3_uri


class ManifestFeed(PooledFeed):
    """Entries of a manifest file, sampled uniformly, re-read when the file changes."""

    def __init__(self, spec: FeedSpec) -> None:
        super().__init__(spec)
        self.on_s3 = spec.uri.startswith("s3://")
        path = urlsplit(spec.uri).path if self.on_s3 else spec.uri
        suffix = os.path.splitext(path.lower())[1]
        # An explicit kind="manifest" with another suffix is read as one entry per line.
        self.format = suffix if suffix in (".parquet", ".csv") else ".txt"
        self.s3 = S3Access(spec, self)
        if self.on_s3:
            self.m_bucket, self.m_key = parse_s3_uri(spec.uri)
            default_base = f"s3://{self.m_bucket}/"
        else:
            self.m_path = local_path(spec.uri)
            default_base = os.path.dirname(self.m_path)
        base = spec.manifest_base
        if base is None:
            self.base = default_base
        elif base.startswith("s3://"):
            parse_s3_uri(base)  # validates
            self.base = base
        else:
            self.base = local_path(base)
        self._version: tuple[Any, ...] | None = None
        self._oversized = False

    # -- reading ------------------------------------------------------------------------------
    def _version_now(self) -> tuple[Any, ...]:
        if self.on_s3:
            head = self.s3.head(self.m_bucket, self.m_key)
            return (head.get("ETag"), str(head.get("LastModified")), head.get("ContentLength"))
        st = os.stat(self.m_path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    @contextlib.contextmanager
    def _local_copy(self) -> Iterator[str]:
        if not self.on_s3:
            yield self.m_path
            return
        with tempfile.TemporaryDirectory(prefix="seer-manifest-", ignore_cleanup_errors=True) as d:
            path = os.path.join(d, "manifest" + self.format)
            self.s3.download(self.m_bucket, self.m_key, path)
            yield path

    def _column(self, names: list[str]) -> str:
        col = self.spec.manifest_column
        if col in names:
            return col
        if col == "key" and "uri" in names:  # the two conventional names
            return "uri"
        raise FeedError(
            f"manifest {self.spec.uri} has no column {col!r} (columns: {', '.join(names)}); "
            "set manifest_column"
        )

    def _read_parquet(self, path: str) -> tuple[list[str], int]:
        pf = pq.ParquetFile(path)
        col = self._column(pf.schema_arrow.names)
        total = pf.metadata.num_rows
        k = min(self.spec.pool_size, total)
        # Row counts are known up front, so draw the row numbers first and read only those:
        # exact uniform sampling without a per-row Python loop over a huge manifest.
        wanted = sorted(self._rng.sample(range(total), k))
        out: list[str] = []
        offset = i = 0
        for batch in pf.iter_batches(columns=[col], batch_size=65536):
            self.check_open()
            j = bisect.bisect_left(wanted, offset + batch.num_rows, i)
            local = pa.array([w - offset for w in wanted[i:j]], type=pa.int64())
            values = batch.column(0).take(local).to_pylist()
            out.extend(str(v) for v in values if v is not None and str(v).strip())
            offset, i = offset + batch.num_rows, j
            if i >= len(wanted):
                break
        return out, total

    def _read_lines(self, path: str) -> tuple[list[str], int]:
        """A CSV file's column, or a text file's lines (``#`` starts a comment line)."""
        with open(path, encoding="utf-8", newline="") as f:
            if self.format == ".csv":
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    return [], 0
                idx = header.index(self._column([h.strip() for h in header]))
                entries = (r[idx].strip() for r in reader if len(r) > idx)
            else:
                entries = (s for s in map(str.strip, f) if not s.startswith("#"))
            return reservoir((e for e in entries if e), self.spec.pool_size, self._rng,
                             check=self.check_open)

    def _resolve(self, entry: str) -> str:
        """An entry as a fetchable name: an ``s3://`` URI or an absolute local path."""
        if entry.startswith("s3://"):
            return entry
        if entry.startswith("file://"):
            return local_path(entry)
        if self.base.startswith("s3://"):
            return self.base.rstrip("/") + "/" + entry.lstrip("/")
        if os.path.isabs(entry):
            return entry
        return os.path.normpath(os.path.join(self.base, entry))

    def _refresh(self) -> None:
        version = self._version_now()
        if version == self._version and not self._oversized:
            return
        with self._local_copy() as path:
            self.count("listings")
            read = self._read_parquet if self.format == ".parquet" else self._read_lines
            entries, total = read(path)
        self._count_keys(self._pool.replace(self._resolve(e) for e in entries))
        self._version = version
        self._oversized = total > self.spec.pool_size
        self.count("manifest_reads")
        self._set("source_objects", total)

    # -- fetching -----------------------------------------------------------------------------
    def _fetch(self, key: str, max_bytes: int | None) -> bytes:
        """Bytes of a sampled entry (``s3://`` URI or local path)."""
        if key.startswith("s3://"):
            bucket, obj = parse_s3_uri(key)
            return self.s3.get(bucket, obj, name=key, max_bytes=max_bytes)
        return read_local(self, key, max_bytes=max_bytes)

    def _close_resources(self) -> None:
        self.s3.client.close()
