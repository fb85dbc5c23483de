"""Where a worker's batches come from: its shard of the stream, or synthetic data."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import torch

from seer_core.augment import MultiCropRecipe
from seer_core.config import SeerConfig

log = logging.getLogger("seer.trainer")

#: Rebuilding the iterator this many times in a row without a batch in between is not a
#: transient error: raise, and let Ray Train restart the worker group.
MAX_REBUILDS = 5
REBUILD_PAUSE_S = 5.0


def synthetic_batches(
    cfg: SeerConfig, recipe: MultiCropRecipe, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The same batch again and again: the compute-only ceiling of the e2e benchmark."""
    gen = torch.Generator().manual_seed(seed)
    batch = {
        key: torch.randint(0, 256, (cfg.train.batch_size, g.count, 3, g.size, g.size),
                           generator=gen, dtype=torch.uint8)
        for key, g in zip(recipe.keys, recipe.groups)
    }
    while True:
        yield batch


def stream_batches(cfg: SeerConfig, recipe: MultiCropRecipe) -> Iterator[dict[str, torch.Tensor]]:
    """This worker's shard of the never-ending stream, iterated once (services.stream).

    The iterator is one Ray Data execution for the whole run: the ingest actors live as long as
    it does. It is rebuilt only after an error (or if it ever ended); a worker-group restart
    builds a new one anyway. Rank 0 also watches spilling (``seer_ingest_spilled_bytes``), on a
    thread of its own that ends with this iterator: never on the step path.
    """
    import ray.train

    from services.stream import SpillWatch

    shard = ray.train.get_dataset_shard("train")
    keys = set(recipe.keys)
    watch = SpillWatch().start() if ray.train.get_context().get_world_rank() == 0 else None
    try:
        yield from _rebuilding(shard, cfg, keys)
    finally:
        if watch is not None:
            watch.stop()


def _rebuilding(shard: Any, cfg: SeerConfig, keys: set[str]) -> Iterator[dict[str, torch.Tensor]]:
    rebuilds = 0
    while True:
        try:
            for batch in shard.iter_torch_batches(
                batch_size=cfg.train.batch_size,
                drop_last=True,
                prefetch_batches=cfg.ingest.prefetch_batches,
            ):
                rebuilds = 0
                yield {k: v for k, v in batch.items() if k in keys}
            log.error("the ingest stream ended, which it never should; rebuilding it")
        except Exception as exc:
            if rebuilds >= MAX_REBUILDS:
                raise
            log.error("the ingest stream failed (%r); rebuilding it in %.0f s", exc,
                      REBUILD_PAUSE_S)
        rebuilds += 1
        if rebuilds > MAX_REBUILDS:
            raise RuntimeError(f"the ingest stream ended {rebuilds} times without a batch")
        time.sleep(REBUILD_PAUSE_S)
