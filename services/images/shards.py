"""Writing image shards the way the public corpora are published, for tests, benchmarks and the
dev overlay (``seer seed --shards``): WebDataset tars as img2dataset writes them, and Parquet
tables as Hugging Face ``datasets`` writes an ``Image`` column.

Shards are numbered ``00000.tar`` / ``00000.parquet`` in a directory, so that a brace pattern
(``{00000..00009}.tar``) or a prefix listing finds them. Each is written under a hidden temporary
name and renamed when complete: a feed listing the directory while seeding runs never draws a
half-written shard (which it would count as ``bad_shard``). img2dataset's per-shard metadata
``.parquet`` and ``_stats.json`` are not written: beside the tars, a ``*.parquet`` listing would
take the metadata tables for image tables.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from services.feed import DEFAULT_IMAGE_EXTENSIONS

#: One sample to write: (key, encoded image bytes, extension such as "jpg" or ".png").
Sample = tuple[str, bytes, str]

#: The Hugging Face ``Image`` feature's storage type.
HF_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# What ``datasets`` stores in the schema metadata, so that it loads the column as ``Image``.
_HF_FEATURES = {"info": {"features": {"key": {"dtype": "string", "_type": "Value"},
                                      "image": {"_type": "Image"}}}}
_SCHEMA = pa.schema([("key", pa.string()), ("image", HF_IMAGE_TYPE)],
                    metadata={"huggingface": json.dumps(_HF_FEATURES)})


def _checked(sample: Sample) -> tuple[str, bytes, str]:
    """(key, data, ext without a dot); ValueError for a key WebDataset would split wrongly."""
    key, data, ext = sample
    ext = ext.lstrip(".").lower()
    # WebDataset splits a member name at the first dot of its basename into key and extension.
    if not key or "." in key.rsplit("/", 1)[-1] or not ext:
        raise ValueError(f"sample key must be non-empty with no '.' and ext non-empty: "
                         f"{key!r}, {ext!r}")
    return key, data, ext


def _chunks(samples: Iterable[Sample], size: int) -> Iterator[list[tuple[str, bytes, str]]]:
    """``size`` samples at a time, so one shard's worth is held, never the whole set."""
    if size < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {size}")
    chunk: list[tuple[str, bytes, str]] = []
    for sample in samples:
        chunk.append(_checked(sample))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Runs ``write`` on a hidden temporary name beside ``path``, then renames it to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644  # mtime 0: the same samples make the same bytes
    tar.addfile(info, io.BytesIO(data))


def write_webdataset_shards(samples: Iterable[Sample], out_dir: str | Path,
                            images_per_shard: int) -> list[Path]:
    """WebDataset tars ``00000.tar``, ``00001.tar``, ... in ``out_dir``; returns their paths.

    Each sample is ``<key>.<ext>`` followed by ``<key>.json`` with img2dataset's fields (``key``,
    ``status``, ``error_message``, ``sha256``), so readers meet the sidecars real shards have.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, chunk in enumerate(_chunks(samples, images_per_shard)):

        def write(tmp: Path, chunk: list[tuple[str, bytes, str]] = chunk) -> None:
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for key, data, ext in chunk:
                    _member(tar, f"{key}.{ext}", data)
                    meta = {"key": key, "status": "success", "error_message": None,
                            "sha256": hashlib.sha256(data).hexdigest()}
                    _member(tar, f"{key}.json", json.dumps(meta).encode())

        paths.append(_write_atomic(out / f"{index:05d}.tar", write))
    return paths


def write_parquet_shards(samples: Iterable[Sample], out_dir: str | Path, images_per_shard: int,
                         rows_per_group: int | None = None) -> list[Path]:
    """Parquet tables ``00000.parquet``, ... with columns ``key`` and ``image`` as Hugging Face
    writes an ``Image`` feature (a struct of ``bytes`` and ``path``); returns their paths.

    ``rows_per_group`` (default: one group per shard) sets the row groups, the unit a reader
    holds in memory and the unit a corrupt page costs.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, chunk in enumerate(_chunks(samples, images_per_shard)):

        def write(tmp: Path, chunk: list[tuple[str, bytes, str]] = chunk) -> None:
            table = pa.table({
                "key": [key for key, _, _ in chunk],
                "image": [{"bytes": data, "path": f"{key}.{ext}"} for key, data, ext in chunk],
            }, schema=_SCHEMA)
            pq.write_table(table, tmp, row_group_size=rows_per_group or len(chunk))

        paths.append(_write_atomic(out / f"{index:05d}.parquet", write))
    return paths


def directory_samples(directory: str | Path,
                      extensions: tuple[str, ...] = DEFAULT_IMAGE_EXTENSIONS) -> Iterator[Sample]:
    """The images of a directory (sorted by name) as samples: key = the file's stem, so that
    ``generate_sample_images`` output can be packed into shards one file at a time."""
    for path in sorted(Path(directory).iterdir()):
        if path.is_file() and path.suffix.lower() in extensions:
            # WebDataset takes the first dot of a name as the key's end: none may stay in a key.
            yield path.stem.replace(".", "_"), path.read_bytes(), path.suffix
