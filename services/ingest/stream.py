"""The ingest stream on Ray: one never-ending Ray Data execution (DESIGN §5). Wiring only.

The endless read tasks (``read``) feed the ingest actor (``crop``) on a *fixed-size* pool (an
autoscaling one churns its actors); each Train worker iterates its shard once
(``services.trainer.batches``), so the actors live as long as the run.

Why the guard rails: Ray Data relaxes backpressure for a task that "will complete soon", and an
endless read task never completes; with 128 MiB blocks the producer out-ran the consumer x70 and
spilled 52 GB in ten minutes. Small blocks (``ingest.target_max_block_mb``, at most 1/32 of the
budget) against an explicit object-store budget (``ingest.object_store_mb``) bound it, and
:func:`data_context_settings` closes the path by which a paused consumer let the producer run
away. :func:`watch_spilling` exports spilled bytes, the sign that a guard rail gave way.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Collection, Iterable
from typing import Any

import ray
import ray.data
from ray.data import DataContext, Dataset

from seer_core.config import SeerConfig
from services import metrics
from services.ingest.crop import IngestActor
from services.ingest.keys import owner_name, start_owner
from services.ingest.read import EndlessDatasource, EndlessRead, feed_spec
from services.ingest.shard_read import ShardRead
from services.ratelimit import RateLimitedLogger

_log = RateLimitedLogger(logging.getLogger("seer.stream"), 30.0)

MiB = 1024 * 1024
#: Share of the budget above which an idle crop stage may drain its queued input instead of
#: Ray Data releasing more output from the endless read tasks (see data_context_settings).
PRESSURE_FRACTION = 0.8
SPILLED = metrics.gauge("seer_ingest_spilled_bytes",
                        "bytes Ray has spilled to disk (should stay 0)")


class RayDataSettingError(RuntimeError):
    """A Ray Data setting the stream relies on does not exist in the installed Ray.

    The guard rails are plain assignments: after a rename in a Ray upgrade, assigning the old
    name would create a new attribute that nothing reads, and the run-away would come back
    without a word. So every name is checked first.
    """


def _require(what: str, names: Iterable[str], known: Collection[str]) -> None:
    if missing := [n for n in names if n not in known]:
        raise RayDataSettingError(
            f"Ray {ray.__version__}: {what} has no {', '.join(missing)}; the ingest stream's "
            "guard rails against run-away and spilling (DESIGN §5) depend on it. Find its new "
            "name in this Ray's release notes and update services/ingest/stream.py, or install "
            "the Ray version pinned in pyproject.toml")


def _require_fields(ctx: Any, names: Iterable[str]) -> None:
    """A dataclass (DataContext is one) is asked for its declared fields, not ``hasattr``: an
    attribute an earlier wrong assignment created must not pass for a field."""
    known = ({f.name for f in dataclasses.fields(ctx)} if dataclasses.is_dataclass(ctx)
             else set(dir(ctx)))
    _require("ray.data.DataContext", names, known)


def _require_keywords(factory: Callable[..., Any], names: Collection[str]) -> None:
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        _require(f"ray.data.{factory.__name__}", names, params)


def data_context_settings(cfg: SeerConfig) -> dict[str, Any]:
    """The DataContext fields the stream sets, and why."""
    return {
        # Blocks are coalesced up to this size before anything is emitted; small blocks are
        # also what keeps an endless producer under backpressure.
        "target_max_block_size": cfg.ingest.target_max_block_mb * MiB,
        # The budget, also for a dataset iterated outside Ray Train (benchmarks, tests, tools):
        # without it Ray Data budgets a share of the whole object store (GBs) for one stream.
        "execution_options": execution_options(cfg),
        # Liveness without run-away. When the trainers stop taking batches, the crop stage's
        # budget fills and it idles with queued input; Ray Data's liveness guard then reads one
        # more block from its producer on *every* scheduling loop, meant to let a read task that
        # "completes soon" finish. An endless one never does: in a 60 s stall the stream went
        # from 64 MiB to 600+ MiB in seconds and spilled GBs (issue 10). With a pressure
        # fraction set, an idle stage may run one task above its budget instead.
        "object_store_memory_pressure_fraction": PRESSURE_FRACTION,
        # The downstream-capacity policy measures the trainers' appetite by the bytes they hold
        # (one prefetched batch); with the allowance above it blocks the crop stage's input
        # while the producer waits on the crop stage: a dead-lock within 20 s. The budget
        # alone bounds the stream.
        "downstream_capacity_backpressure_ratio": None,
        # One execution runs for weeks: no progress bars or banners.
        "enable_progress_bars": False,
        "print_on_execution_start": False,
    }


def configure_data_context(cfg: SeerConfig, ctx: DataContext | None = None) -> DataContext:
    """Tunes Ray Data for a stream of crops, in the process that *builds* the dataset (Ray
    Train's controller: the driver's changes do not apply there). Raises
    :class:`RayDataSettingError`, before setting anything, if a field does not exist."""
    ctx = ctx if ctx is not None else DataContext.get_current()
    settings = data_context_settings(cfg)
    _require_fields(ctx, settings)
    for name, value in settings.items():
        setattr(ctx, name, value)
    return ctx


def execution_options(cfg: SeerConfig) -> Any:
    """Ray Data execution options (also Ray Train's ``DataConfig(execution_options=)``).

    An explicit object-store budget bounds what the producer may hold ahead of the trainers;
    order does not matter in a random stream, and not preserving it lets fast actors run ahead.
    """
    from ray.data import ExecutionOptions, ExecutionResources

    resources = {"object_store_memory": cfg.ingest.object_store_mb * MiB}
    _require_keywords(ExecutionResources, resources)
    _require_keywords(ExecutionOptions, ("preserve_order", "resource_limits"))
    return ExecutionOptions(resource_limits=ExecutionResources(**resources), preserve_order=False)


def reserved_cpus(cfg: SeerConfig) -> float:
    """CPUs the run takes besides the ingest actors: Train workers, read tasks, the controller."""
    return (cfg.train.max_workers * cfg.train.cpus_per_worker
            + cfg.ingest.read_tasks * cfg.ingest.read_task_cpus + 0.5)


def pool_size(cfg: SeerConfig) -> int:
    """Ingest actors in the pool: ``ingest.actors``, or (0) what the CPUs Ray has leave, over
    ``ingest.cpus_per_actor``, at least 1. Changing it means a new run of ``seer pretrain``."""
    if cfg.ingest.actors:
        return cfg.ingest.actors
    free = float(ray.cluster_resources().get("CPU", 1.0)) - reserved_cpus(cfg)
    return max(1, int(free // cfg.ingest.cpus_per_actor))


def build_stream(cfg: SeerConfig, *, actors: int | None = None) -> Dataset:
    """The never-ending ingest stream as a Ray Dataset; iterate it once. ``actors``: the pool
    size when already resolved (else :func:`pool_size`)."""
    configure_data_context(cfg)
    ing = cfg.ingest
    size = actors if actors is not None else pool_size(cfg)
    spec = feed_spec(cfg)
    # The run's one key pool, or shard list (services.ingest.keys), owned by this process,
    # found by name when the stream is built again; created now so its first listing overlaps
    # the start.
    owner = owner_name(spec, cfg.checkpoint.storage, cfg.checkpoint.run_name)
    start_owner(owner, spec)
    read: EndlessRead | ShardRead
    if spec.resolved_kind() == "shards":  # shard visits (services.feed.shards)
        read = ShardRead(spec, ing.chunk_images, ing.max_object_bytes,
                         block_bytes=ing.target_max_block_mb * MiB // 2, owner=owner)
    else:
        read = EndlessRead(spec, ing.chunk_images, ing.max_object_bytes,
                           block_bytes=ing.target_max_block_mb * MiB // 2,
                           fetch_threads=ing.fetch_threads, owner=owner)
    ds = ray.data.read_datasource(EndlessDatasource(read, ing.read_tasks),
                                  override_num_blocks=ing.read_tasks, num_cpus=ing.read_task_cpus)
    return ds.map_batches(
        IngestActor,
        fn_constructor_kwargs={"cfg": cfg},
        batch_size=max(1, min(cfg.train.batch_size, ing.chunk_images)),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=size, max_size=size),
        num_cpus=ing.cpus_per_actor,
    )


def dataset_factory(cfg: SeerConfig, *, actors: int | None = None) -> Callable[[], Dataset]:
    """A picklable ``build_stream`` for ``datasets={"train": ...}`` (Ray Train calls it in its
    controller at every worker-group start). The DataContext fields are checked here too, in
    the driver, so a renamed field stops ``seer pretrain`` before Ray Train starts."""
    _require_fields(DataContext.get_current(), data_context_settings(cfg))
    return functools.partial(build_stream, cfg, actors=actors)


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


def watch_spilling(stop: threading.Event, interval_s: float = 30.0) -> None:
    """Sets ``seer_ingest_spilled_bytes`` and warns when it grows, every ``interval_s``, until
    ``stop``. On a thread of its own, never a step path: the query walks every node's store
    (10 s timeout), and a step waiting for it would hold every rank in the next collective."""
    last = 0
    while not stop.is_set():
        try:
            spilled = store_stats().get("spilled", 0)
            SPILLED.set(spilled)
            if spilled > last:
                _log.warning("spill", "Ray spilled %.1f MiB to disk: the stream is out-running "
                             "the trainers; lower ingest.target_max_block_mb or "
                             "ingest.object_store_mb", spilled / MiB)
            last = spilled
        except Exception as exc:  # a metric must never take the stream down
            _log.warning("spill-watch", "spill watch failed: %r", exc)
        stop.wait(interval_s)
