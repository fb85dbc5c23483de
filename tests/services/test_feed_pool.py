"""KeyPool and key-space helpers."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from services.feed.keyspace import Coverage, KeyAlphabet, merge_intervals, random_start
from services.feed.pool import KeyPool


def test_pool_is_bounded_and_evicts_the_longest_unconfirmed() -> None:
    pool = KeyPool(3)
    assert pool.add(["a", "b", "c"]) == (3, 0)
    pool.add(["a"])  # re-confirmed: now the youngest
    assert pool.add(["d"]) == (1, 1)
    assert sorted(pool.snapshot()) == ["a", "c", "d"]  # b was the oldest
    assert len(pool) == 3


def test_pool_discard_and_replace() -> None:
    pool = KeyPool(10)
    pool.add(["a", "b", "c", "d"])
    assert pool.discard_many(["b"]) == 1
    assert pool.discard_many(["b"]) == 0
    assert "b" not in pool.snapshot()
    assert pool.discard_many(["a", "zz"]) == 1
    assert sorted(pool.snapshot()) == ["c", "d"]
    added, removed = pool.replace(["d", "e", "e", "f"])
    assert (added, removed) == (2, 1)
    assert sorted(pool.snapshot()) == ["d", "e", "f"]
    # replace keeps at most capacity keys
    small = KeyPool(2)
    small.replace(["x", "y", "z"])
    assert len(small) == 2


def test_pool_sampling_is_uniform() -> None:
    pool = KeyPool(100)
    keys = [f"k{i}" for i in range(20)]
    pool.add(keys)
    pool.discard_many(["k3"])  # exercise the swap-remove path
    pool.add(["k3"])
    n = 20_000
    counts = Counter(pool.wait_sample(n, random.Random(0), 0.0) or [])
    assert set(counts) == set(keys)
    expected = n / len(keys)
    chi2 = sum((counts[k] - expected) ** 2 / expected for k in keys)
    assert chi2 < 43.8  # chi-square, 19 d.o.f., p = 0.001
    assert pool.wait_sample(5, random.Random(0), 0.0)
    assert KeyPool(1).wait_sample(3, random.Random(0), 0.0) is None


def test_wait_sample_waits_for_the_first_key_and_tells_empty_from_n_zero() -> None:
    """What ``PooledFeed.sample`` polls: None while empty (``[]`` is the answer for n = 0), and
    a key added by another thread (the refresher) ends the wait early."""
    pool = KeyPool(4)
    t0 = time.monotonic()
    assert pool.wait_sample(3, random.Random(0), 0.05) is None
    assert time.monotonic() - t0 >= 0.04
    threading.Timer(0.05, pool.add, args=(["a"],)).start()
    t0 = time.monotonic()
    assert pool.wait_sample(2, random.Random(0), 5.0) == ["a", "a"]
    assert time.monotonic() - t0 < 2.0
    assert pool.wait_sample(0, random.Random(0), 0.0) == []


def test_merge_and_coverage() -> None:
    merged = merge_intervals([("m", "p"), (None, "c"), ("b", "f"), ("x", None)])
    assert merged == [(None, "f"), ("m", "p"), ("x", None)]
    cov = Coverage(merged)
    assert "a" in cov and "f" in cov and "n" in cov and "y" in cov
    assert "g" not in cov and "m" not in cov and "x" not in cov and "q" not in cov
    assert not cov.complete
    assert Coverage([("k", None), (None, "k")]).complete
    assert not Coverage([("k", None), (None, "j")]).complete
    assert "anything" not in Coverage([])


def test_random_start_stays_under_prefix_and_uses_observed_characters() -> None:
    alphabet = KeyAlphabet(positions=8, explore=0.0)
    assert alphabet.empty()
    keys = [f"img/{i:04d}.jpg" for i in range(0, 400, 7)]
    alphabet.observe(k[4:] for k in keys)
    assert sorted(alphabet._sets[0]) == ["0"]
    assert sorted(alphabet._sets[1]) == ["0", "1", "2", "3"]
    rng = random.Random(1)
    points = [random_start("img/", rng.choice(keys), alphabet, rng) for _ in range(2000)]
    assert all(p.startswith("img/") for p in points)
    # Starts spread over the whole key range: every hundred is hit.
    assert {p[5] for p in points if len(p) > 5} == {"0", "1", "2", "3"}


@pytest.mark.parametrize("bad", [0, -1])
def test_pool_capacity_validated(bad: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        KeyPool(bad)
