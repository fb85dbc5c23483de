"""Where a worker's batches come from: its shard of the stream, or synthetic data."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import torch

from seer_core.augment import MultiCropRecipe
from seer_core.config import SeerConfig
from services.ingest.stream import watch_spilling

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
    """This worker's shard of the never-ending stream, iterated once (services.ingest.stream).

    One Ray Data execution for the whole run, never rebuilt in place: an error raises at once
    and Ray Train restarts the whole group from the newest checkpoint with a new stream (DESIGN
    §5). A shard rebuilt on one rank would wait at the split coordinator's barrier for every
    shard while the others wait for it in the next all-reduce, for ``train.collective_timeout_s``.
    A bad object never gets here (the ingest side skips it), so what does is not transient.
    Rank 0 also watches spilling, on a thread of its own that ends with this iterator.
    """
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    keys = set(recipe.keys)
    stop = threading.Event()
    if ray.train.get_context().get_world_rank() == 0:
        threading.Thread(target=watch_spilling, args=(stop,), name="seer-spill-watch",
                         daemon=True).start()
    try:
        for batch in shard.iter_torch_batches(
            batch_size=cfg.train.batch_size,
            drop_last=True,
            prefetch_batches=cfg.ingest.prefetch_batches,
        ):
            yield {k: v for k, v in batch.items() if k in keys}
    except Exception as exc:
        log.error("the ingest stream failed (%r): the worker group restarts", exc)
        raise
    finally:
        stop.set()
    raise StreamEnded("the ingest stream ended, which it never should: the worker group "
                      "restarts")


class StreamEnded(RuntimeError):
    """The never-ending stream ended; the group restarts rather than one rank rebuilding it."""
