"""Reasoning about a bucket's key space without listing all of it.

Two jobs:
1. Pick random *start points* for listing pages (``StartAfter``), so that a pool of 100k keys
   drawn from a bucket of a billion spreads over the whole key space and keeps moving.
2. Track which key *ranges* a refresh cycle listed. A listing page is authoritative for the range
   it covers: a pooled key inside a listed range that the listing did not return has been deleted.
   When the ranges of one cycle cover the whole ring, the bucket was listed in full.

Keys compare as Python strings, i.e. by code point, which is the same order as S3's UTF-8
binary order (UTF-8 preserves code-point order).
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from collections.abc import Iterable, Sequence

#: (lo, hi): every key k with lo < k <= hi. lo None is -infinity, hi None is +infinity.
Interval = tuple[str | None, str | None]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint union of half-open key ranges (touching ranges are joined)."""
    items = sorted(intervals, key=lambda iv: (iv[0] is not None, iv[0] or ""))
    merged: list[Interval] = []
    for lo, hi in items:
        if merged:
            mlo, mhi = merged[-1]
            # (mlo, mhi] and (lo, hi] are contiguous when lo <= mhi (keys in (lo, mhi] overlap).
            if mhi is None or lo is None or lo <= mhi:
                if mhi is None or hi is None:
                    merged[-1] = (mlo, None)
                else:
                    merged[-1] = (mlo, max(mhi, hi))
                continue
        merged.append((lo, hi))
    return merged


def covers_all(merged: Sequence[Interval]) -> bool:
    """Whether merged ranges span the whole key space (the bucket was listed in full)."""
    return len(merged) == 1 and merged[0] == (None, None)


class Coverage:
    """Membership test against merged ranges in O(log n)."""

    def __init__(self, intervals: Iterable[Interval]) -> None:
        self.merged = merge_intervals(intervals)
        # -infinity sorts before every real key; "" is below any non-empty key.
        self._los = ["" if lo is None else lo for lo, _ in self.merged]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not self.merged:
            return False
        # The candidate range is the last one whose lo is strictly below key.
        i = bisect.bisect_left(self._los, key) - 1
        if i < 0:
            return False
        lo, hi = self.merged[i]
        return (lo is None or key > lo) and (hi is None or key <= hi)

    @property
    def complete(self) -> bool:
        return covers_all(self.merged)


class KeyAlphabet:
    """Per-position character frequencies of observed keys (after the feed's prefix).

    This is the model random start points are drawn from; see :func:`random_start`.
    """

    def __init__(self, positions: int = 32) -> None:
        self.positions = positions
        self._counts: list[Counter[str]] = [Counter() for _ in range(positions)]
        self._tables: list[tuple[list[str], list[int]] | None] = [None] * positions

    def observe(self, suffixes: Iterable[str]) -> None:
        for s in suffixes:
            for i, ch in enumerate(s[: self.positions]):
                self._counts[i][ch] += 1
                self._tables[i] = None

    def empty(self) -> bool:
        return not self._counts[0]

    def draw(self, rng: random.Random, start: int) -> str:
        """Characters for positions ``start..`` drawn from each position's frequencies."""
        out: list[str] = []
        for i in range(start, self.positions):
            if not self._counts[i]:
                break
            table = self._tables[i]
            if table is None:
                chars = sorted(self._counts[i])
                table = (chars, [self._counts[i][c] for c in chars])
                self._tables[i] = table
            out.append(rng.choices(table[0], weights=table[1])[0])
        return "".join(out)


def random_start(
    prefix: str, known: str | None, alphabet: KeyAlphabet, rng: random.Random, max_len: int = 1000
) -> str:
    """A random ``StartAfter`` point in the key space under ``prefix``.

    Method: take a uniformly drawn known key (from the pool), keep a random-length head of it
    (``j`` uniform in ``0..len``), and complete it with characters drawn position by position
    from the observed character frequencies. Why this mixture:

    - ``j = 0`` is a random string over the observed key alphabet. For the common naming
      schemes (hashes, UUIDs, zero-padded numbers) characters at each position are close to
      independent, so such points land in proportion to key density, and they reach ranges the
      pool has never seen (exploration).
    - a long head is a point "just after a known key": its distribution follows the pool's keys,
      which handles skewed layouts (``2019/`` holding ten times ``2024/``) that per-position
      frequencies flatten (exploitation).
    - the remaining bias, towards keys that follow an empty gap, is small because each start
      yields a short run and a cycle uses many starts.

    No method short of a full listing is exactly uniform; the pool is re-drawn every cycle, so
    any bias moves around rather than settling on the same keys.
    """
    head = ""
    if known is not None and known.startswith(prefix):
        suffix = known[len(prefix) :]
        head = suffix[: rng.randint(0, len(suffix))]
    point = prefix + head + alphabet.draw(rng, len(head))
    return point[:max_len]
