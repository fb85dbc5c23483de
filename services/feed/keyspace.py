"""Reasoning about a bucket's key space without listing all of it: random *start points* for
listing pages (``StartAfter``), so that a pool of 100k keys drawn from a bucket of a billion
spreads over the whole key space and keeps moving; and the key *ranges* a refresh cycle listed,
since a page is authoritative for its range (a pooled key inside it that the listing did not
return was deleted) and ranges that cover the whole ring mean the bucket was listed in full.
Keys compare as Python strings (by code point), which is S3's UTF-8 binary order.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable

#: (lo, hi): every key k with lo < k <= hi. lo None is -infinity, hi None is +infinity.
Interval = tuple[str | None, str | None]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint union of half-open key ranges (touching ranges are joined)."""
    items = sorted(intervals, key=lambda iv: (iv[0] is not None, iv[0] or ""))
    merged: list[Interval] = []
    for lo, hi in items:
        if merged:
            mlo, mhi = merged[-1]
            if mhi is None or lo is None or lo <= mhi:  # (mlo, mhi] and (lo, hi] touch
                merged[-1] = (mlo, None if mhi is None or hi is None else max(mhi, hi))
                continue
        merged.append((lo, hi))
    return merged


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
        """Whether the ranges span the whole key space (the bucket was listed in full)."""
        return self.merged == [(None, None)]


class KeyAlphabet:
    """Which characters occur at each position of observed keys (after the feed's prefix).

    Sets, not frequencies: the first listing of a cycle starts at the beginning of the key space,
    so a frequency model would keep drawing its small characters and the pool would never leave
    the start. ``explore`` is the chance of drawing from the characters seen anywhere, which is
    how a position learns characters it has not met yet.
    """

    def __init__(self, positions: int = 32, explore: float = 0.1) -> None:
        self.positions = positions
        self.explore = explore
        self._sets: list[set[str]] = [set() for _ in range(positions)]
        self._all: set[str] = set()

    def observe(self, suffixes: Iterable[str]) -> None:
        for s in suffixes:
            for i, ch in enumerate(s[: self.positions]):
                self._sets[i].add(ch)
                self._all.add(ch)

    def empty(self) -> bool:
        return not self._all

    def draw(self, rng: random.Random, start: int) -> str:
        """Characters for positions ``start..``, each uniform over those seen there (sorted
        first: a seeded generator draws the same start whatever order the sets iterate in)."""
        out: list[str] = []
        for i in range(start, self.positions):
            if not self._sets[i]:
                break
            seen = self._all if rng.random() < self.explore else self._sets[i]
            out.append(rng.choice(sorted(seen)))
        return "".join(out)


def random_start(
    prefix: str, known: str | None, alphabet: KeyAlphabet, rng: random.Random, max_len: int = 1000
) -> str:
    """A random ``StartAfter`` point in the key space under ``prefix``: half of the time a random
    string over the observed alphabet, otherwise a random-length head of a pooled key completed
    the same way. Why this mixture:

    - the random string explores: for the common naming schemes (hashes, UUIDs, padded numbers,
      dates) positions are about uniform and independent, so such points land in proportion to
      key density and reach ranges the pool has never seen;
    - the head of a known key follows the pool's own distribution, which handles skewed layouts
      (``2019/`` holding ten times ``2024/``) that the per-position model flattens;
    - half of each cycle's starts are independent of the last pool, so the bias of the first
      listing (from the start of the key space) halves every cycle. What remains, a mild
      over-sampling of keys after empty gaps, stays small as each start yields a short run.
    No method short of a full listing is exactly uniform over a bucket it has not seen.
    """
    head = ""
    if known is not None and known.startswith(prefix) and rng.random() < 0.5:
        suffix = known[len(prefix) :]
        head = suffix[: rng.randint(1, max(1, len(suffix)))]
    point = prefix + head + alphabet.draw(rng, len(head))
    return point[:max_len]
