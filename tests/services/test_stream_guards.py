"""The stream's guard rails hold by construction (services.ingest.stream; no Ray started here).

- Ray Data settings are checked, not assumed: a field a Ray upgrade renamed must stop the
  run at start, not become a new attribute nobody reads (the 52 GB spill of issue 10 came back
  that way in principle: the guard rails are plain assignments).
- The spill watch never runs on a trainer's step path: its query is a cluster-wide RPC with a
  10 s timeout.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from ray.data import DataContext

from seer_core.config import load_config
from services.ingest import stream


def _cfg() -> Any:
    return load_config("local", ["train.batch_size=2"])


@dataclasses.dataclass
class _RenamedContext:
    """A DataContext as a future Ray might have it: one guard-rail field renamed."""

    target_max_block_size: int | None = 128 * 1024 * 1024
    execution_options: Any = None
    object_store_pressure_fraction: float | None = None  # renamed: "..._memory_pressure_..."
    downstream_capacity_backpressure_ratio: float | None = 10.0
    enable_progress_bars: bool = True
    print_on_execution_start: bool = True


def test_a_renamed_data_context_field_fails_at_start() -> None:
    ctx = _RenamedContext()
    with pytest.raises(stream.RayDataSettingError, match="object_store_memory_pressure_fraction"):
        stream.configure_data_context(_cfg(), ctx)  # type: ignore[arg-type]
    # Checked before anything is set: a half-tuned context is never left behind.
    assert ctx.target_max_block_size == 128 * 1024 * 1024
    assert "object_store_memory_pressure_fraction" not in vars(ctx)


def test_the_driver_checks_the_fields_before_ray_train_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream.DataContext, "get_current", staticmethod(_RenamedContext))
    with pytest.raises(stream.RayDataSettingError, match="object_store_memory_pressure_fraction"):
        stream.dataset_factory(_cfg())


def test_the_real_data_context_takes_every_setting() -> None:
    cfg = _cfg()
    ctx = stream.configure_data_context(cfg, DataContext())
    assert ctx.target_max_block_size == cfg.ingest.target_max_block_mb * stream.MiB
    assert ctx.object_store_memory_pressure_fraction == stream.PRESSURE_FRACTION
    assert ctx.downstream_capacity_backpressure_ratio is None
    limits = ctx.execution_options.resource_limits
    assert limits.object_store_memory == cfg.ingest.object_store_mb * stream.MiB


def test_a_renamed_execution_option_fails_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray.data

    class RenamedResources:  # ExecutionResources as a future Ray might spell it
        def __init__(self, cpu: float | None = None, object_store_bytes: int | None = None):
            self.cpu, self.object_store_bytes = cpu, object_store_bytes

    monkeypatch.setattr(ray.data, "ExecutionResources", RenamedResources)
    with pytest.raises(stream.RayDataSettingError, match="object_store_memory"):
        stream.execution_options(_cfg())


class _Shard:
    """A dataset shard that hands out batches as fast as they are asked for."""

    def __init__(self) -> None:
        self.batches = 0

    def iter_torch_batches(self, **_: Any) -> Iterator[dict[str, Any]]:
        import torch

        while True:
            self.batches += 1
            yield {"g": torch.zeros(2, 1), "chunk": torch.zeros(2)}


class _Context:
    def get_world_rank(self) -> int:
        return 0  # rank 0: the rank that watches spilling


def test_a_slow_spill_query_never_delays_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0's batches do not wait for the spill query (here a 5 s hang, as when the GCS is
    slow: the real query has a 10 s timeout); the query runs beside them, and stops with the
    iterator."""
    import ray.train

    from services.trainer.batches import stream_batches

    queried = threading.Event()

    def hanging_store_stats() -> dict[str, int]:
        queried.set()
        time.sleep(5.0)
        return {"used": 0, "spilled": 0}

    shard = _Shard()
    monkeypatch.setattr(stream, "store_stats", hanging_store_stats)
    monkeypatch.setattr(ray.train, "get_dataset_shard", lambda name: shard)
    monkeypatch.setattr(ray.train, "get_context", lambda: _Context())
    recipe = type("Recipe", (), {"keys": ("g",)})()

    start = time.monotonic()
    batches = stream_batches(_cfg(), recipe)  # type: ignore[arg-type]
    taken = [next(batches) for _ in range(50)]
    elapsed = time.monotonic() - start
    batches.close()
    assert [set(b) for b in taken] == [{"g"}] * 50
    assert elapsed < 2.0, f"50 batches took {elapsed:.1f} s: the spill query is on the step path"
    assert queried.wait(5.0), "the spill watch never queried"
