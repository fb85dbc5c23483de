"""One key pool per run (issue 20): a named actor lists the store; read tasks draw batches from it.

Without it every read-task process opened its own feed and listed up to ``feed.pool_size`` keys
every refresh: with the paper preset's 64 read tasks, 64 listings of a million keys every 10
minutes, and 64 copies of the pool in memory. Now the run has one :class:`KeyOwner`, a named Ray
actor holding the spec's feed (``services.feed``: its pool and background refresher, unchanged);
LIST calls per refresh no longer grow with the number of read tasks. Each read task draws keys
through a :class:`KeyDrawer` and fetches them with its process's own feed, which is never
sampled and so never lists (``services.feed.pooled``: the refresher starts on first sample).

Lifetime. ``build_stream`` creates the owner (``get_if_exists``, so a rebuilt stream, a
restarted worker group or a second build of the same run finds the one that is there); it is
not detached: it is owned by the process that builds the stream (Ray Train's controller in a
run, the driver in a benchmark) and ends with it, so no run leaves one behind. Ray restarts it
if its process dies (``max_restarts=-1``); a restarted owner opens the feed again and relists.
Its name comes from the run (``checkpoint.storage``, ``checkpoint.run_name``) and the feed
spec: a run that changes its feed gets a new owner rather than the old pool.

Failures. While the owner is unreachable (restarting, or its node gone), a read task waits with
backoff and asks again, for as long as it takes: the stream slows, it never stops. An owner
that is gone for good (its creator died, or someone killed it without restart) is created
again by the first read task that asks (``get_if_exists``): the stream still goes on.
``FeedEmpty`` keeps its meaning: the owner's pool had no key within the feed's wait.

Batch size (:data:`KEY_BATCH`), at the paper preset's 25,600 images/s with 64 read tasks
(400 images/s each) and ``ingest.chunk_images`` = 256:

- one call per key would be 25,600 actor calls/s: past what one actor serves (a few thousand
  small calls/s);
- one call per 1,024 keys is 25,600 / 1,024 = 25 calls/s for the whole run, one every ~2.6 s per
  read task. A call costs the owner well under a millisecond (Ray's dispatch plus
  ``random.choices`` of 1,024 keys), so the owner spends under 2.5 % of one core on it: two
  orders of magnitude of headroom, for faster runs or more read tasks;
- 1,024 keys of ~80 bytes is ~80 KiB: the reply stays under Ray's 100 KiB inline limit
  (``max_direct_call_object_size``), so it never goes through the object store.

A batch is dropped after :data:`BATCH_MAX_AGE_S` however much is left, so a slow stream (a
laptop: tens of images/s) never works from keys drawn long before (new objects, vanished ones).
Keys a read task found vanished are handed to the owner with its next call (no extra call), so
they leave the run's pool as they left a process's pool before.

Shards (``feed.kind: shards``). The owner's pool is then the shard list (a
:class:`~services.feed.shards.source.ShardSource`: a brace pattern's names, a prefix's or a
glob's LIST pages, a list file), listed once per refresh for the whole run, and a read task
draws the shard of each visit from it (:data:`SHARD_BATCH` names a call); a shard found gone
goes back like a vanished key, and is out of the run's list until the next listing. Drawing
names rather than handing each read task the list, at the paper preset's 64 read tasks over
LAION-400M's 41,456 shards of ~10,000 images, for a week:

- the list is 41,456 names of ~45 bytes, ~2 MB pickled: past the inline limit, so every copy
  goes through the object store; 64 copies per refresh (every 10 minutes, 1,008 a week) is
  ~130 GB a week of copies of a list that changes by a few names, plus a versioning protocol
  to tell a read task its copy is stale, plus 64 copies in memory (~1 GB each at the 10M names
  a pattern may hold);
- drawn names: a whole-shard visit is 10,000 images at 400 images/s, 25 s, so the run makes
  25,600 / 10,000 = 2.6 visits/s (1.5M a week, each shard visited ~37 times): 2.6 calls/s for
  the owner. Batches of 64 (~3 KB a reply) keep short visits as cheap: at
  ``feed.images_per_shard_visit`` = 16, 1,600 visits/s run-wide are 25 calls/s, the key feed's
  load. With whole-shard visits a batch is older than :data:`BATCH_MAX_AGE_S` before its
  second name is used, so each visit asks afresh and 63 names are dropped (3 KB per 25 s per
  read task); draws are independent, so dropping some leaves the rest uniform with replacement.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from services.feed import FeedEmpty, FeedSpec, PooledFeed, open_feed
from services.feed.shards.source import ShardSource
from services.ratelimit import RateLimitedLogger

logger = logging.getLogger("seer.ingest.keys")
_log = RateLimitedLogger(logger, 30.0)

#: Keys per call to the owner (the arithmetic is in the module docstring).
KEY_BATCH = 1024
#: Shard names per call to the owner of a shard feed's list (see the module docstring).
SHARD_BATCH = 64
#: A batch older than this is dropped and a fresh one drawn (slow streams keep fresh keys).
BATCH_MAX_AGE_S = 10.0
#: Threads of the owner: one call in flight per read task (each may wait for a first key),
#: with room for 4x the paper preset's 64 read tasks before calls queue.
OWNER_THREADS = 256
#: Beyond the feed's own wait, how long a read task waits for the owner's answer before it
#: counts the owner as unreachable.
CALL_MARGIN_S = 30.0
#: Backoff while the owner is unreachable: from the first to the last, doubling, with jitter.
BACKOFF_S = (0.1, 5.0)


def owner_name(spec: FeedSpec, storage: str, run_name: str) -> str:
    """The owner's Ray actor name: the run and a digest of the spec (a new spec, a new pool)."""
    digest = hashlib.sha256(repr((storage, run_name, spec)).encode()).hexdigest()[:12]
    return f"seer-keys-{run_name}-{digest}"


def open_pool(spec: FeedSpec) -> PooledFeed:
    """The feed whose pool the owner serves: the keys of an object feed, or the shard list of a
    shard feed (its keys are shard names)."""
    return ShardSource(spec) if spec.resolved_kind() == "shards" else open_feed(spec)


class KeyOwner:
    """The run's one feed: lists the store in the background, serves random keys (or shard
    names) by the batch.

    A threaded actor (:data:`OWNER_THREADS`): the pool is thread-safe, and a call that waits
    for the first listing must not hold up the others.
    """

    def __init__(self, spec: FeedSpec) -> None:
        self.feed: PooledFeed = open_pool(spec)
        self.rng = random.Random()
        self.feed.pool_size()  # starts the listing now: the first read task finds keys sooner

    def sample(self, n: int, gone: Sequence[str] = ()) -> list[str]:
        """``n`` keys uniform with replacement from the live pool (FeedEmpty after the feed's
        wait), after dropping ``gone``: keys a read task found vanished."""
        if gone:
            self.feed.forget(gone)
        keys = self.feed.sample(n, self.rng)
        self.feed.count("batches_served")
        return keys

    def stats(self) -> dict[str, float]:
        """The feed's counters (listings, refreshes, pool size: what the run's listing costs)
        and ``batches_served`` (the calls read tasks made: what the owner's load is)."""
        return self.feed.stats()


def owner_actor(name: str, spec: FeedSpec) -> Any:
    """The owner called ``name``, created (owned by the calling process) if there is none.

    Ray ends a non-detached actor once its creator holds no handle to it (a handle found by
    name does not count): the creator keeps the one this returns for as long as the owner is
    needed (:func:`start_owner`, or the :class:`KeyDrawer` that had to create it).
    """
    actor = ray.remote(KeyOwner).options(
        name=name, get_if_exists=True, max_restarts=-1, max_task_retries=0, num_cpus=0,
        max_concurrency=OWNER_THREADS)
    return actor.remote(spec)


#: The owner this process started for its stream (one: a process builds one run's stream).
_STARTED: dict[str, Any] = {}
_STARTED_LOCK = threading.Lock()


def start_owner(name: str, spec: FeedSpec) -> None:
    """Starts (or finds) the owner for a stream this process builds, and keeps it for as long
    as this process lives or until it starts one of another name: a process builds the stream
    of one run (Ray Train's controller), so a new name means the old stream is over."""
    handle = owner_actor(name, spec)
    with _STARTED_LOCK:
        if name not in _STARTED:
            _STARTED.clear()
            _STARTED[name] = handle


#: Keys found vanished in this process, by owner name, not yet handed to the owner.
_GONE: dict[str, list[str]] = {}
_GONE_LOCK = threading.Lock()


def report_vanished(name: str, key: str) -> None:
    """Notes that ``key`` vanished; the next draw from owner ``name`` hands it over."""
    with _GONE_LOCK:
        _GONE.setdefault(name, []).append(key)


def _take_gone(name: str) -> list[str]:
    with _GONE_LOCK:
        return _GONE.pop(name, [])


class KeyDrawer:
    """A read task's side of the owner: chunks of keys cut from batches of ``batch`` keys
    (:data:`KEY_BATCH`; :data:`SHARD_BATCH` for shard names).

    Not picklable (it holds an actor handle): build one where the read task runs.
    """

    def __init__(self, name: str, spec: FeedSpec, batch: int = KEY_BATCH) -> None:
        self.name, self.spec, self.batch = name, spec, batch
        self.jitter = random.Random()
        self._owner: Any = None
        self._keys: list[str] = []
        self._drawn_at = 0.0

    def draw(self, n: int) -> list[str]:
        """``n`` keys: the next ones of the current batch, or of a fresh one (when the batch
        has fewer left, or is older than :data:`BATCH_MAX_AGE_S`). Waits out an unreachable
        owner; raises FeedEmpty as the owner's feed did."""
        if len(self._keys) < n or time.monotonic() - self._drawn_at > BATCH_MAX_AGE_S:
            # A whole number of chunks per batch: none is wasted when the batch runs out.
            self._keys = self._ask(n * max(1, self.batch // max(n, 1)))
            self._drawn_at = time.monotonic()
        chunk, self._keys = self._keys[:n], self._keys[n:]
        return chunk

    def _ask(self, n: int) -> list[str]:
        """One batch from the owner, however long it is unreachable."""
        wait = BACKOFF_S[0]
        gone = _take_gone(self.name)
        while True:
            try:
                if self._owner is None:
                    self._owner = owner_actor(self.name, self.spec)
                ref = self._owner.sample.remote(n, gone)
                return ray.get(ref, timeout=self.spec.retry_budget_s + CALL_MARGIN_S)
            except FeedEmpty as exc:  # the owner's feed had no key: the caller's business
                raise FeedEmpty(str(getattr(exc, "cause", exc))) from None
            except (RayActorError, GetTimeoutError) as exc:
                # Restarting, gone, or too slow: look it up again (get_if_exists creates it
                # if it is gone for good) after a pause.
                self._owner = None
                _log.warning("owner-unreachable", "key owner %s unreachable (%s); waiting "
                             "%.1fs and asking again", self.name, type(exc).__name__, wait)
            time.sleep(self.jitter.uniform(0.5, 1.0) * wait)
            wait = min(2 * wait, BACKOFF_S[1])
