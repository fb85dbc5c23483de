"""The ingest stream on Ray: one never-ending Ray Data execution (DESIGN §5). Wiring only.

Shape: :class:`EndlessDatasource` gives ``ingest.read_tasks`` read tasks that never end; each
draws ``ingest.chunk_images`` fresh random keys from the feed (uniform, with replacement; the
feed's key pool refreshes underneath), fetches them and yields small blocks of
``{key, data, reason}``, chunk after chunk, for ever. ``map_batches`` runs
:class:`IngestActor` (``services.ingest.Cropper``: decode + multi-crop) on a *fixed-size* actor
pool (``min_size == max_size``: an autoscaling pool churns its actors). Each Train worker
iterates its ``streaming_split`` shard once (``services.trainer.batches``): the actors live as
long as the run, and there is no pass boundary, hence no per-pass barrier or pool restart.

Why the guard rails (``ingest.target_max_block_mb`` at most 1/32 of ``ingest.object_store_mb``,
enforced by the config's validation; :func:`execution_options`): Ray Data relaxes
backpressure for an operator whose task "will complete soon", and an endless read task never
completes; with 128 MiB blocks the producer out-ran the consumer x70 and spilled 52 GB in ten
minutes. Small blocks (``ingest.target_max_block_mb``) against an explicit object-store budget
(``ingest.object_store_mb``) keep it bounded while the trainers keep up. When they pause (a
checkpoint, an evaluation), Ray Data's liveness guard used to release one block from the read
tasks on every scheduling loop, for as long as the pause lasted: :func:`configure_data_context`
closes that path (``object_store_memory_pressure_fraction``, no downstream-capacity policy).
:class:`SpillWatch` exports spilled bytes, the sign that a guard rail gave way.

Failures: a fetch failure travels as a row with a ``reason`` and no data, and the cropper counts
it with decode failures, so every failure is counted exactly once and never reaches a trainer.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
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
from services import metrics
from services.feed import FeedEmpty, FeedSpec
from services.ingest import Cropper, IngestMetrics, feed_spec, fetch_object, process_feed
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
    ]
)

#: Fetches in flight per read task: S3 latency, not CPU, bounds a sequential fetch loop.
FETCH_THREADS = 8
#: Pause after the feed gave up (store down or empty) before drawing again; the feed itself
#: already waited its retry budget, so this only keeps an empty store from being hammered.
EMPTY_FEED_PAUSE_S = 1.0
#: Share of the budget above which an idle crop stage may drain its queued input instead of
#: Ray Data releasing more output from the endless read tasks (see configure_data_context).
PRESSURE_FRACTION = 0.8


@dataclass(frozen=True)
class EndlessRead:
    """One read task: draw a chunk of random keys, fetch it, yield blocks, for ever. Picklable.

    Randomness comes from ``os.urandom`` where the task runs, each time it starts: Ray may ship
    the same pickled task again (an iterator rebuilt after an error), and it must draw new keys.
    """

    spec: FeedSpec
    chunk_images: int
    max_object_bytes: int
    block_bytes: int
    fetch_threads: int = FETCH_THREADS

    def key_chunks(self) -> Iterator[list[str]]:
        """Chunks of keys for ever: uniform with replacement, fresh from the live pool."""
        rng = random.Random()
        while True:
            try:
                # Asked again for every chunk: the feed of this process, refreshed underneath.
                keys = process_feed(self.spec).sample(self.chunk_images, rng)
            except FeedEmpty as exc:
                # The store is down or empty: the stream slows down, it does not stop.
                _log.error("feed-empty", "no keys to draw: %s", exc)
                time.sleep(EMPTY_FEED_PAUSE_S)
                continue
            yield keys

    def __call__(self) -> Iterator[pa.Table]:
        meter = IngestMetrics()
        spec = self.spec
        max_bytes = self.max_object_bytes

        def one(key: str) -> Any:
            return fetch_object(process_feed(spec), key, max_bytes, meter=meter, log=_log)

        with ThreadPoolExecutor(self.fetch_threads, thread_name_prefix="seer-fetch") as pool:
            for keys in self.key_chunks():
                rows: list[Any] = []
                size = 0
                # map() keeps key order and overlaps up to `fetch_threads` fetches.
                for fetched in pool.map(one, keys):
                    rows.append(fetched)
                    size += len(fetched.data or b"")
                    if size >= self.block_bytes:  # small blocks: the guard rail against run-away
                        yield _table(rows)
                        rows, size = [], 0
                if rows:
                    yield _table(rows)


def _table(rows: list[Any]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "key": [r.key for r in rows],
            "data": [r.data or b"" for r in rows],
            "reason": [r.reason or "" for r in rows],
        },
        schema=READ_SCHEMA,
    )


class EndlessDatasource(Datasource):
    """``read_tasks`` endless read tasks per execution (see :class:`EndlessRead`)."""

    def __init__(
        self,
        spec: FeedSpec,
        *,
        read_tasks: int,
        chunk_images: int,
        max_object_bytes: int,
        block_bytes: int,
        fetch_threads: int = FETCH_THREADS,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.read_tasks = read_tasks
        self.chunk_images = chunk_images
        self.max_object_bytes = max_object_bytes
        self.block_bytes = max(1, block_bytes)
        self.fetch_threads = max(1, fetch_threads)

    def get_name(self) -> str:
        return "EndlessRandom"

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # unbounded

    def reads(self) -> list[EndlessRead]:
        """The read tasks of an execution (each draws its own keys: see :class:`EndlessRead`)."""
        read = EndlessRead(self.spec, self.chunk_images, self.max_object_bytes,
                           self.block_bytes, self.fetch_threads)
        return [read] * self.read_tasks

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: DataContext | None = None,
    ) -> list[ReadTask]:
        # `parallelism` is ignored on purpose: the number of read tasks is a config decision
        # (build_stream passes override_num_blocks=read_tasks so the two agree).
        return [
            ReadTask(
                read,
                BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None),
                schema=READ_SCHEMA,
                per_task_row_limit=per_task_row_limit,
            )
            for read in self.reads()
        ]


class IngestActor:
    """The ``map_batches`` callable of the pool: a :class:`Cropper` that lives as long as the
    run (fixed-size pool, one execution)."""

    def __init__(self, cfg: SeerConfig) -> None:
        self.cropper = Cropper(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.cropper.crop_rows(batch)


class RayDataSettingError(RuntimeError):
    """A Ray Data setting the stream relies on does not exist in the installed Ray.

    The guard rails are plain assignments: after a rename in a Ray upgrade, assigning the old
    name would create a new attribute that nothing reads, and the run-away (52 GB spilled in
    ten minutes) would come back without a word. So every name is checked first.
    """


def configure_data_context(cfg: SeerConfig, ctx: DataContext | None = None) -> DataContext:
    """Tunes Ray Data for a stream of crops (DESIGN §5); returns the context it changed.

    Must run in the process that *builds* the dataset: Ray Train calls the dataset factory in
    its controller, where the driver's DataContext changes do not apply.

    Raises:
        RayDataSettingError: a field below does not exist in this Ray (checked before any is
            set, so the context is left as it was).
    """
    ctx = ctx if ctx is not None else DataContext.get_current()
    settings = data_context_settings(cfg)
    _require_fields(ctx, settings, "ray.data.DataContext")
    for name, value in settings.items():
        setattr(ctx, name, value)
    return ctx


def data_context_settings(cfg: SeerConfig) -> dict[str, Any]:
    """The DataContext fields the stream sets, and why (see :func:`configure_data_context`)."""
    return {
        # Blocks are coalesced up to this size before anything is emitted; small blocks are
        # also what keeps an endless producer under backpressure.
        "target_max_block_size": cfg.ingest.target_max_block_mb * MiB,
        # The budget, also for a dataset iterated outside Ray Train (benchmarks, tests, tools):
        # without it Ray Data budgets a share of the whole object store (GBs) for one stream.
        "execution_options": execution_options(cfg),
        # Liveness without run-away. When the trainers stop taking batches (a checkpoint, an
        # eval, a slow step), the crop stage's budget fills and it idles with queued input; Ray
        # Data's liveness guard then reads one more block from its producer on *every*
        # scheduling loop, which lets a read task that "completes soon" finish. An endless read
        # task never does: in a 60 s consumer stall the stream went from 64 MiB to 600+ MiB in
        # seconds and spilled GBs (issue 10). With a pressure fraction set, an idle stage with
        # queued input may run one task above its budget instead, so the guard no longer
        # releases the producer.
        "object_store_memory_pressure_fraction": PRESSURE_FRACTION,
        # The downstream-capacity policy measures the trainers' appetite by the bytes they hold
        # (one prefetched batch); with the allowance above it blocks the crop stage's input
        # while the producer waits on the crop stage: a dead-lock seen within 20 s. The
        # object-store budget alone bounds the stream.
        "downstream_capacity_backpressure_ratio": None,
        # One execution runs for weeks: no progress bars or banners.
        "enable_progress_bars": False,
        "print_on_execution_start": False,
    }


def _require_fields(obj: Any, names: Iterable[str], what: str) -> None:
    """Raises :class:`RayDataSettingError` unless ``obj`` already has every field in ``names``.

    A dataclass (DataContext is one) is asked for its declared fields, not ``hasattr``: an
    attribute an earlier wrong assignment created must not pass for a field.
    """
    if dataclasses.is_dataclass(obj):
        known = {f.name for f in dataclasses.fields(obj)}
        missing = [n for n in names if n not in known]
    else:
        missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise RayDataSettingError(_missing_message(what, missing))


def _require_parameters(factory: Callable[..., Any], names: Iterable[str], what: str) -> None:
    """Like :func:`_require_fields`, for keyword arguments of a constructor."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # takes any keyword: the constructor itself is the judge
    missing = [n for n in names if n not in params]
    if missing:
        raise RayDataSettingError(_missing_message(what, missing))


def _missing_message(what: str, missing: list[str]) -> str:
    return (
        f"Ray {ray.__version__}: {what} has no {', '.join(missing)}; the ingest stream's guard "
        "rails against run-away and spilling (DESIGN §5) depend on it. Find its new name in "
        "this Ray's release notes and update services/stream.py, or install the Ray version "
        "pinned in pyproject.toml"
    )


def execution_options(cfg: SeerConfig) -> Any:
    """Ray Data execution options (Ray Train: ``DataConfig(execution_options=)``).

    An explicit object-store budget (``ingest.object_store_mb``) bounds what the producer may
    hold ahead of the trainers. Order does not matter in a random stream; not preserving it
    lets fast actors run ahead. Raises :class:`RayDataSettingError` if this Ray spells an
    option differently.
    """
    from ray.data import ExecutionOptions, ExecutionResources

    resources = {"object_store_memory": cfg.ingest.object_store_mb * MiB}
    options = {"preserve_order": False}
    _require_parameters(ExecutionResources, resources, "ray.data.ExecutionResources")
    _require_parameters(ExecutionOptions, [*options, "resource_limits"],
                        "ray.data.ExecutionOptions")
    return ExecutionOptions(resource_limits=ExecutionResources(**resources), **options)


def pool_size(cfg: SeerConfig, cluster_cpus: float | None = None) -> int:
    """Ingest actors in the pool: ``ingest.actors``, or (0) what the CPUs left allow.

    Auto: the CPUs Ray has (``cluster_cpus``, else ``ray.cluster_resources()``) minus the Train
    workers, the read tasks and the Train controller, over ``ingest.cpus_per_actor``, at least 1.
    Changing it means restarting the stream (a new run of ``seer pretrain``; it resumes).
    """
    ing = cfg.ingest
    if ing.actors:
        return ing.actors
    if cluster_cpus is None:
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    free = (
        cluster_cpus
        - cfg.train.max_workers * cfg.train.cpus_per_worker
        - ing.read_tasks * ing.read_task_cpus
        - 0.5
    )
    return max(1, int(free // ing.cpus_per_actor))


def build_stream(cfg: SeerConfig, *, actors: int | None = None) -> Dataset:
    """The never-ending ingest stream as a Ray Dataset; iterate it once.

    ``actors``: the pool size, when already resolved (else :func:`pool_size`).
    """
    configure_data_context(cfg)
    ing = cfg.ingest
    size = actors if actors is not None else pool_size(cfg)
    source = EndlessDatasource(
        feed_spec(cfg),
        read_tasks=ing.read_tasks,
        chunk_images=ing.chunk_images,
        max_object_bytes=ing.max_object_bytes,
        block_bytes=max(1, ing.target_max_block_mb * MiB // 2),
        fetch_threads=ing.fetch_threads,
    )
    ds = ray.data.read_datasource(
        source, override_num_blocks=ing.read_tasks, num_cpus=ing.read_task_cpus
    )
    batch_rows = max(1, min(cfg.train.batch_size, ing.chunk_images))
    return ds.map_batches(
        IngestActor,
        fn_constructor_kwargs={"cfg": cfg},
        batch_size=batch_rows,
        batch_format="numpy",
        # min == max: an autoscaling pool churns its actors (6 processes in 71 s, issue 10).
        compute=ray.data.ActorPoolStrategy(min_size=size, max_size=size),
        num_cpus=ing.cpus_per_actor,
    )


@dataclass(frozen=True)
class StreamFactory:
    """A picklable zero-argument callable building the stream (Ray Train ``datasets=``)."""

    cfg: SeerConfig
    actors: int | None = None

    def __call__(self) -> Dataset:
        return build_stream(self.cfg, actors=self.actors)


def dataset_factory(cfg: SeerConfig, *, actors: int | None = None) -> Callable[[], Dataset]:
    """``datasets={"train": dataset_factory(cfg)}``: DataContext is tuned inside the call.

    Runs in the driver, so the DataContext fields are checked here too: a renamed field stops
    ``seer pretrain`` before Ray Train starts (the factory itself runs in Train's controller,
    at every worker-group start).
    """
    _require_fields(DataContext.get_current(), data_context_settings(cfg), "ray.data.DataContext")
    return StreamFactory(cfg, actors=actors)


def store_stats() -> dict[str, int]:
    """The cluster's object-store figures: ``used`` and ``spilled`` bytes (empty on failure).

    Ray has no public API for these (``ray memory --stats-only`` prints them); this reads the
    same reply through ``ray._private.internal_api``, guarded since it is internal.
    """
    try:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        stats = get_memory_info_reply(state, timeout_seconds=10.0).store_stats
        return {"used": int(stats.object_store_bytes_used),
                "spilled": int(stats.spilled_bytes_total)}
    except Exception:  # an internal API: never let a metric stop the stream
        return {}


def spilled_bytes() -> int:
    """Bytes the Ray cluster has spilled to disk so far (0 when Ray cannot tell)."""
    return store_stats().get("spilled", 0)


class SpillWatch:
    """Exports ``seer_ingest_spilled_bytes`` and warns once spilling starts (guard rail).

    Runs on a thread of its own (:meth:`start`, :meth:`stop`), never on a trainer's step path:
    the query walks every node's store stats through the GCS with a 10 s timeout, and a step
    that waited for it would hold every other rank in the next collective. The alert itself
    (``RayObjectStoreSpilling``) reads Ray's own ``ray_object_store_memory{Location="SPILLED"}``;
    this adds the log line a user sees and the dashboard's "seen by the stream" series.
    """

    gauge = metrics.gauge(
        "seer_ingest_spilled_bytes", "bytes Ray has spilled to disk (should stay 0)")

    def __init__(self, interval_s: float = 30.0, probe: Callable[[], int] = spilled_bytes) -> None:
        self.interval_s = interval_s
        self.probe = probe
        self.last = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SpillWatch:
        """Polls every ``interval_s`` on a daemon thread until :meth:`stop`; returns self."""
        self._thread = threading.Thread(target=self._run, name="seer-spill-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Asks the thread to end; does not wait for a query in flight (it ends on its own)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # a metric must never take the stream down
                _log.warning("spill-watch", "spill watch failed: %r", exc)
            self._stop.wait(self.interval_s)

    def poll(self) -> int:
        """One query: sets the gauge, warns when the spilled bytes grew; returns them."""
        spilled = self.probe()
        self.gauge.set(spilled)
        if spilled > self.last:
            _log.warning(
                "spill", "Ray spilled %.1f MiB to disk: the stream is out-running the trainers; "
                "lower ingest.target_max_block_mb or ingest.object_store_mb", spilled / MiB
            )
        self.last = spilled
        return spilled
