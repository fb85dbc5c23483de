"""Where a worker's batches come from: its shard of the stream, or synthetic data."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import torch

from seer_core.augment import MultiCropRecipe
from seer_core.config import SeerConfig

log = logging.getLogger("seer.trainer")


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
    """Pass after pass over this worker's shard of the random stream (each pass is new)."""
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    keys = set(recipe.keys)
    while True:
        got_any = False
        for batch in shard.iter_torch_batches(
            batch_size=cfg.train.batch_size,
            drop_last=True,
            prefetch_batches=cfg.ingest.prefetch_batches,
        ):
            got_any = True
            yield {k: v for k, v in batch.items() if k in keys}
        if not got_any:
            # Every image of the pass was rejected or the store is down: back off, try again.
            log.warning("a pass of the stream gave no full batch; retrying in 5 s")
            time.sleep(5)
