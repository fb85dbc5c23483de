"""The ingest stream on Ray Data: random windows of keys → fetch (read tasks) → crop (actors).

Ray Data has no unbounded source (ray-project/ray#40513), so the stream is a *bounded* dataset
whose every execution is a fresh random window (DESIGN §5): each read task samples
``ingest.window_images`` keys from the feed with new randomness each pass, fetches them (I/O in
the read task, ``num_cpus=ingest.read_task_cpus``) and yields blocks of
``{key, data, reason, window}``; a pool of ingest actors (``map_batches`` over
:class:`IngestActor`) decodes and multi-crops them into rows of uint8 crops, one column per crop
group (``crops_<size>``: ``[n, 3, s, s]`` per row), which ``iter_torch_batches`` stacks into
``[B, n, 3, s, s]``. The consumer loops pass after pass; backpressure comes from Ray Data.

Failures: a fetch failure (or an object over the byte limit) travels as a row with a ``reason``
and no data (a few bytes), and the ingest actor counts it together with decode failures, so every
failure is counted exactly once, in one place, and bad objects never reach the trainer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import DataContext, Dataset
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from seer_core.config import SeerConfig
from services.feed import FeedEmpty, FeedSpec
from services.ingest import (
    IngestMetrics,
    IngestStats,
    IngestWorker,
    feed_spec,
    fetch_object,
    process_feed,
)
from services.ratelimit import RateLimitedLogger

logger = logging.getLogger("seer.stream")
_log = RateLimitedLogger(logger, 30.0)

MiB = 1024 * 1024

#: Columns of the blocks the read tasks yield.
READ_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("data", pa.binary()),
        ("reason", pa.string()),  # "" when fetched; else a reason of services.ingest.REASONS
        ("window", pa.int64()),  # which random window (read task execution) the row came from
    ]
)

#: Fetches in flight per read task: S3 latency, not CPU, bounds a sequential fetch loop.
FETCH_THREADS = 8


def _window_seed(base: bytes, pass_no: int, task: int) -> int:
    """A 63-bit seed per (pass, task): independent windows, reproducible when ``base`` is."""
    digest = hashlib.blake2b(base + f":{pass_no}:{task}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class WindowRead:
    """What one read task does: sample a window of keys, fetch them, yield blocks. Picklable."""

    spec: FeedSpec
    seed: int
    window_images: int
    max_object_bytes: int
    chunk_rows: int
    chunk_bytes: int
    fetch_threads: int = FETCH_THREADS

    def keys(self) -> list[str]:
        """The window: ``window_images`` keys, uniform with replacement, from this seed."""
        return process_feed(self.spec).sample(self.window_images, random.Random(self.seed))

    def __call__(self) -> Iterator[pa.Table]:
        try:
            keys = self.keys()
        except FeedEmpty as exc:
            # The store is down or empty: this window is empty, the stream goes on (slowly: the
            # feed waited its budget). The consumer sees a short pass and loops.
            _log.error("feed-empty", "empty window: %s", exc)
            return
        feed = process_feed(self.spec)
        meter = IngestMetrics()

        def one(key: str) -> Any:
            return fetch_object(feed, key, self.max_object_bytes, meter=meter, log=_log)

        threads = max(1, min(self.fetch_threads, len(keys)))
        with ThreadPoolExecutor(threads, thread_name_prefix="seer-fetch") as pool:
            rows: list[Any] = []
            size = 0
            # map() keeps key order and overlaps up to `threads` fetches.
            for fetched in pool.map(one, keys):
                rows.append(fetched)
                size += len(fetched.data or b"")
                if len(rows) >= self.chunk_rows or size >= self.chunk_bytes:
                    yield self._table(rows)
                    rows, size = [], 0
            if rows:
                yield self._table(rows)

    def _table(self, rows: list[Any]) -> pa.Table:
        return pa.Table.from_pydict(
            {
                "key": [r.key for r in rows],
                "data": [r.data or b"" for r in rows],
                "reason": [r.reason or "" for r in rows],
                "window": [self.seed] * len(rows),
            },
            schema=READ_SCHEMA,
        )


class RandomWindowDatasource(Datasource):
    """``read_tasks`` read tasks per execution, each a fresh random window of the feed.

    Randomness: a base from ``os.urandom`` (or ``seed``, for tests) plus a pass counter and the
    task index, hashed; ``get_read_tasks`` runs once per execution, so every pass samples new
    windows and the stream never repeats a fixed order.
    """

    def __init__(
        self,
        spec: FeedSpec,
        *,
        read_tasks: int,
        window_images: int,
        max_object_bytes: int,
        chunk_rows: int,
        chunk_bytes: int,
        seed: int | None = None,
        fetch_threads: int = FETCH_THREADS,
    ) -> None:
        super().__init__()
        self.fetch_threads = max(1, fetch_threads)
        self.spec = spec
        self.read_tasks = read_tasks
        self.window_images = window_images
        self.max_object_bytes = max_object_bytes
        self.chunk_rows = max(1, chunk_rows)
        self.chunk_bytes = max(1, chunk_bytes)
        self.seed = seed
        self._pass_no = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock")  # Ray pickles the datasource into the executing process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def get_name(self) -> str:
        return "RandomWindow"

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # unknown until fetched; Ray Data measures blocks as they come

    def windows(self) -> list[WindowRead]:
        """The next pass's windows (advances the pass counter)."""
        with self._lock:
            pass_no = self._pass_no
            self._pass_no += 1
        base = os.urandom(16) if self.seed is None else str(self.seed).encode()
        return [
            WindowRead(
                spec=self.spec,
                seed=_window_seed(base, pass_no, i),
                window_images=self.window_images,
                max_object_bytes=self.max_object_bytes,
                chunk_rows=self.chunk_rows,
                chunk_bytes=self.chunk_bytes,
                fetch_threads=self.fetch_threads,
            )
            for i in range(self.read_tasks)
        ]

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: DataContext | None = None,
    ) -> list[ReadTask]:
        # `parallelism` is ignored on purpose: the number of windows is a config decision
        # (build_stream passes override_num_blocks=read_tasks so the two agree).
        return [
            ReadTask(
                read,
                BlockMetadata(
                    num_rows=read.window_images,
                    size_bytes=None,
                    exec_stats=None,
                    input_files=None,
                ),
                schema=READ_SCHEMA,
                per_task_row_limit=per_task_row_limit,
            )
            for read in self.windows()
        ]


def start_stats() -> Any:
    """Starts an :class:`IngestStats` actor; pass it to ``build_stream(stats=...)``."""
    return ray.remote(num_cpus=0)(IngestStats).remote()


def read_stats(stats: Any, timeout: float = 30.0) -> dict[str, Any]:
    """The stats actor's snapshot (see :meth:`IngestStats.snapshot`)."""
    return ray.get(stats.snapshot.remote(), timeout=timeout)


class IngestActor:
    """The ``map_batches`` callable of the ingest actor pool: decode + multi-crop.

    Holds one :class:`IngestWorker` (a ``MultiCrop`` built from ``cfg.augment``, with
    ``photometric=not cfg.augment.photometric_on_device``); input rows are the read tasks'
    ``{key, data, reason, window}``, output rows ``{crops_<size>: uint8 [n, 3, s, s]}``.
    """

    def __init__(self, cfg: SeerConfig, stats: Any = None) -> None:
        self.worker = IngestWorker(cfg, fetch_threads=1)
        self.stats = stats

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = [str(k) for k in batch["key"]]
        reasons = [str(r) for r in batch["reason"]]
        items = [
            (key, None if reason else bytes(data), reason or None)
            for key, data, reason in zip(keys, batch["data"], reasons)
        ]
        before = Counter(self.worker.counts)
        result = self.worker.process_fetched(items)
        if self.stats is not None:
            delta = Counter(self.worker.counts)
            delta.subtract(before)
            windows = [int(w) for w in batch["window"]]
            # Fire and forget: a slow stats actor must never slow the stream.
            self.stats.record.remote(
                {k: v for k, v in delta.items() if v}, list(zip(windows, keys))
            )
        return result.numpy()


# Per-process ingest workers for the task-based variant (see ``build_stream(compute="tasks")``):
# Ray reuses worker processes across tasks and passes, so the worker is built once per process.
_TASK_ACTORS: dict[str, IngestActor] = {}
_TASK_LOCK = threading.Lock()


def ingest_task(
    batch: dict[str, np.ndarray], cfg: SeerConfig, cfg_key: str, stats: Any = None
) -> dict[str, np.ndarray]:
    """``map_batches`` function for ``compute="tasks"``: an IngestActor cached per process."""
    with _TASK_LOCK:
        actor = _TASK_ACTORS.get(cfg_key)
        if actor is None:
            actor = _TASK_ACTORS[cfg_key] = IngestActor(cfg, stats)
    return actor(batch)


def configure_data_context(cfg: SeerConfig, ctx: DataContext | None = None) -> DataContext:
    """Tunes Ray Data for a stream of crops (DESIGN §5); returns the context it changed.

    Must run in the process that *builds* the dataset: Ray Train calls the dataset factory in
    its controller, where the driver's DataContext changes do not apply.
    """
    ctx = ctx if ctx is not None else DataContext.get_current()
    # Blocks are coalesced up to this size before anything is emitted: 128 MiB of crops would
    # delay the first batch and hold memory for nothing.
    ctx.target_max_block_size = cfg.ingest.target_max_block_mb * MiB
    # A never-ending job runs thousands of passes: per-pass progress bars and banners are noise.
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ctx


def execution_options(cfg: SeerConfig) -> Any:
    """Ray Data execution options for the stream (Ray Train: ``DataConfig(execution_options=)``).

    Order does not matter in a random stream; not preserving it lets fast actors run ahead.
    """
    from ray.data import ExecutionOptions

    return ExecutionOptions(preserve_order=False)


def build_stream(
    cfg: SeerConfig,
    *,
    stats: Any = None,
    seed: int | None = None,
    spec: FeedSpec | None = None,
    compute: str | None = None,
) -> Dataset:
    """The ingest stream as a Ray Dataset: one random window per read task per execution.

    ``stats``: an :func:`start_stats` actor to report counts to (tests, CLI progress).
    ``seed``: reproducible windows (tests); None draws from ``os.urandom`` every pass.
    ``spec``: a FeedSpec overriding the one ``cfg.feed`` describes (e.g. test-only fields).
    ``compute``: ``ingest.compute`` unless given. ``"actors"`` (DESIGN's shape): a pool of
    ``ingest.actors_min`` to ``ingest.actors_max`` :class:`IngestActor`; ``"tasks"``: the same
    work as Ray tasks (at most ``ingest.actors_max`` at once) with the worker cached per
    process. Why both: Ray Data starts
    a new actor pool for every execution, so each pass pays actor start-up (process + torch
    import: ~5 s on a loaded 2-core machine), while task worker processes survive across passes
    (pass switch ~1 s there). Prefer "actors" with large windows (a pass of a minute or more),
    "tasks" when passes are short.
    """
    configure_data_context(cfg)
    ing = cfg.ingest
    compute = compute or ing.compute
    batch_rows = max(1, min(cfg.train.batch_size, ing.window_images))
    source = RandomWindowDatasource(
        spec if spec is not None else feed_spec(cfg),
        read_tasks=ing.read_tasks,
        window_images=ing.window_images,
        max_object_bytes=ing.max_object_bytes,
        chunk_rows=batch_rows,
        chunk_bytes=max(1, ing.target_max_block_mb * MiB // 2),
        seed=seed,
        fetch_threads=ing.fetch_threads,
    )
    ds = ray.data.read_datasource(
        source,
        override_num_blocks=ing.read_tasks,
        num_cpus=ing.read_task_cpus,
    )
    if compute == "tasks":
        return ds.map_batches(
            ingest_task,
            fn_kwargs={"cfg": cfg, "cfg_key": cfg.to_yaml(), "stats": stats},
            batch_size=batch_rows,
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=ing.actors_max),
            num_cpus=ing.cpus_per_actor,
        )
    if compute != "actors":
        raise ValueError(f"compute must be 'actors' or 'tasks', got {compute!r}")
    return ds.map_batches(
        IngestActor,
        fn_constructor_kwargs={"cfg": cfg, "stats": stats},
        batch_size=batch_rows,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=ing.actors_min, max_size=ing.actors_max),
        num_cpus=ing.cpus_per_actor,
    )


@dataclass(frozen=True)
class StreamFactory:
    """A picklable zero-argument callable building the stream (Ray Train ``datasets=``)."""

    cfg: SeerConfig
    seed: int | None = None
    compute: str | None = None

    def __call__(self) -> Dataset:
        return build_stream(self.cfg, seed=self.seed, compute=self.compute)


def dataset_factory(cfg: SeerConfig, *, compute: str | None = None) -> Callable[[], Dataset]:
    """``datasets={"train": dataset_factory(cfg)}``: DataContext is tuned inside the call."""
    if compute not in (None, "actors", "tasks"):
        raise ValueError(f"compute must be 'actors' or 'tasks', got {compute!r}")
    return StreamFactory(cfg, compute=compute)
