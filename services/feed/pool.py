"""The bounded key pool every feed samples from: O(1) uniform sampling (a list; the ingest stage
draws thousands of keys a second), O(1) removal (a dict of positions: swap with the last slot),
and oldest-first eviction (an ordered dict of last-confirmed order: the key a listing has not
confirmed for longest makes room for a newly listed one).
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import OrderedDict
from collections.abc import Iterable


class KeyPool:
    """A thread-safe, bounded set of keys with uniform sampling and oldest-first eviction."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self.capacity = capacity
        self._keys: list[str] = []
        self._pos: dict[str, int] = {}
        self._age: OrderedDict[str, None] = OrderedDict()  # oldest confirmation first
        self._lock = threading.Lock()
        self.nonempty = threading.Condition(self._lock)

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def _remove_locked(self, key: str) -> None:
        i = self._pos.pop(key)
        last = self._keys.pop()
        if last != key:
            self._keys[i] = last
            self._pos[last] = i
        del self._age[key]

    def add(self, keys: Iterable[str]) -> tuple[int, int]:
        """Adds or re-confirms keys (a listing just confirmed them); returns (added, evicted)."""
        added = evicted = 0
        with self._lock:
            for key in keys:
                if key in self._pos:
                    self._age.move_to_end(key)
                    continue
                if len(self._keys) >= self.capacity:
                    oldest = next(iter(self._age))
                    self._remove_locked(oldest)
                    evicted += 1
                self._pos[key] = len(self._keys)
                self._keys.append(key)
                self._age[key] = None
                added += 1
            if added:
                self.nonempty.notify_all()
        return added, evicted

    def replace(self, keys: Iterable[str]) -> tuple[int, int]:
        """Makes the pool exactly ``keys`` (the first ``capacity`` distinct ones): a source read
        in full (a directory walk, a manifest) is the truth, and anything not in it is gone."""
        fresh = list(itertools.islice(dict.fromkeys(keys), self.capacity))
        pos = {key: i for i, key in enumerate(fresh)}
        with self._lock:
            added = sum(1 for k in fresh if k not in self._pos)
            removed = sum(1 for k in self._keys if k not in pos)
            self._keys = fresh
            self._pos = pos
            self._age = OrderedDict.fromkeys(fresh)
            if fresh:
                self.nonempty.notify_all()
        return added, removed

    def discard_many(self, keys: Iterable[str]) -> int:
        """Removes every present key of ``keys`` (repeats allowed: a key sampled twice may be
        found vanished twice); returns how many left."""
        with self._lock:
            present = [key for key in dict.fromkeys(keys) if key in self._pos]
            for key in present:
                self._remove_locked(key)
        return len(present)

    def wait_sample(self, n: int, rng: random.Random, wait_s: float) -> list[str] | None:
        """``n`` keys drawn uniformly with replacement (SEER has no epochs: repeats are fine),
        after waiting at most ``wait_s`` for a first key; None (not the ``[]`` of ``n == 0``)
        while the pool is empty: the caller decides whether to wait more."""
        with self.nonempty:
            if not self._keys and wait_s > 0:
                self.nonempty.wait_for(lambda: bool(self._keys), timeout=wait_s)
            return rng.choices(self._keys, k=n) if self._keys else None

    def random_key(self, rng: random.Random) -> str | None:
        """One uniformly drawn key, or None when the pool is empty."""
        with self._lock:
            return self._keys[rng.randrange(len(self._keys))] if self._keys else None

    def snapshot(self) -> list[str]:
        """A copy of the current keys (for eviction passes and tests)."""
        with self._lock:
            return list(self._keys)
