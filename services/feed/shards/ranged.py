"""A seekable file object over ranged GETs, so pyarrow can read a Parquet shard on S3 in place.

A Parquet table's footer is at its end and its image column is a few column chunks: pyarrow
reads them with many small seeks and reads (the 8-byte footer length, the footer, page headers,
pages). One GET per pyarrow read would cost tens of requests per row group; reading whole blocks
(1 MiB by default, or more when pyarrow asks for more) and serving the small reads from the last
block makes a footer one GET and a row group's column chunk about one GET per block it spans.
The block near the end of the file is aligned to end at the end, so a table smaller than a
block costs one GET in all. :attr:`RangedReader.range_calls` is the GET count of the cost model.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

#: The read-ahead block: large enough that a footer plus a small column chunk is one GET, small
#: enough that a read task holds little beyond the row group pyarrow builds anyway.
BLOCK_BYTES = 1 << 20


class RangedReader(io.RawIOBase):
    """A read-only, seekable file of ``size`` bytes whose bytes come from
    ``read_range(start, end_inclusive)`` (an S3 ``Range: bytes=start-end`` GET).

    ``read_range`` raises the store's errors (ObjectVanished, FetchFailed) and must return
    exactly the bytes asked for; a short answer (the object changed under the reader) is an
    OSError, which the Parquet reader counts as a damaged shard. Not thread-safe: one reader per
    shard visit.
    """

    def __init__(self, read_range: Callable[[int, int], bytes], size: int,
                 block_bytes: int = BLOCK_BYTES) -> None:
        super().__init__()
        if size < 0 or block_bytes < 1:
            raise ValueError(f"need size >= 0 and block_bytes >= 1, got {size}, {block_bytes}")
        self.read_range, self.size, self.block_bytes = read_range, size, block_bytes
        self.range_calls = 0  # GETs made
        self.bytes_fetched = 0  # bytes those GETs returned
        self._pos = 0
        self._block_start, self._block = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes from the position (all the rest for -1); b"" at the end."""
        if self.closed:
            raise ValueError("read of a closed RangedReader")
        left = max(0, self.size - self._pos)
        n = left if size is None or size < 0 else min(size, left)
        if n == 0:
            return b""
        data = self._bytes(self._pos, n)
        self._pos += n
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer).cast("B")))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._block = b""
        super().close()

    def _bytes(self, pos: int, n: int) -> bytes:
        """``n`` bytes at ``pos`` from the cached block, else from a new block fetched for it."""
        offset = pos - self._block_start
        if offset >= 0 and offset + n <= len(self._block):
            return self._block[offset:offset + n]
        if n >= self.block_bytes:
            start, end = pos, pos + n
        else:  # a block from pos on, moved back to end at the end of the file when it would pass it
            start = max(0, min(pos, self.size - self.block_bytes))
            end = min(self.size, start + self.block_bytes)
        block = self.read_range(start, end - 1)
        self.range_calls += 1
        self.bytes_fetched += len(block)
        if len(block) != end - start:
            raise OSError(f"ranged read {start}-{end - 1} returned {len(block)} bytes, "
                          f"expected {end - start}: the object changed while it was read")
        self._block_start, self._block = start, block
        return block[pos - start:pos - start + n]
