"""The ingest actor: a read block's rows (bytes) → guards, decode, multi-crop → uint8 batches.

:class:`Cropper` holds the work and no Ray, so the benchmark and unit tests check exactly what
the actors run (:class:`IngestActor`, the stream's ``map_batches`` callable). The pixel and side
guards are applied by ``seer_core.augment``'s decoder from the header, before decoding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from seer_core.augment import ImageRejected, MultiCrop, build_multicrop, collate_crops
from seer_core.augment.recipes import MultiCropRecipe
from seer_core.config import SeerConfig
from seer_core.training import photometric_params
from services.ingest.read import REASONS, IngestMetrics, size_guard
from services.ratelimit import RateLimitedLogger

logger = logging.getLogger("seer.ingest")


@dataclass
class IngestResult:
    """A collated batch of the images that made it, and what happened to the others.

    ``batch`` is the wire format: one uint8 tensor ``[B, count, 3, size, size]`` per crop group,
    keyed ``crops_<size>`` (``B`` may be 0 when every object failed). ``keys`` are the images in
    ``batch`` order; ``rejected`` the ``(key, reason)`` of the others.
    """

    batch: dict[str, torch.Tensor]
    keys: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def numpy(self) -> dict[str, np.ndarray]:
        """The batch as numpy arrays (zero-copy), the form Ray Data blocks take."""
        return {k: v.numpy() for k, v in self.batch.items()}


def empty_batch(recipe: MultiCropRecipe) -> dict[str, torch.Tensor]:
    """A batch of zero images with the right per-group shapes (all objects failed)."""
    return {g.key: torch.empty((0, g.count, 3, g.size, g.size), dtype=torch.uint8)
            for g in recipe.groups}


class Cropper:
    """Guards → decode + multi-crop → collated batch, for objects already fetched. No Ray.

    Not thread-safe (one ``MultiCrop`` generator). ``seed``: reproducible crops (benchmark).
    """

    def __init__(self, cfg: SeerConfig, *, seed: int | None = None) -> None:
        aug = cfg.augment
        self.multicrop: MultiCrop = build_multicrop(
            aug.recipe, seed=seed, photometric=not aug.photometric_on_device,
            max_pixels=aug.max_pixels, min_side=aug.min_side, params=photometric_params(cfg),
            **aug.overrides(),
        )
        self.recipe: MultiCropRecipe = self.multicrop.recipe
        self.max_object_bytes = cfg.ingest.max_object_bytes
        self.meter = IngestMetrics()
        self.log = RateLimitedLogger(logger, 30.0)

    def crop(self, key: str, data: bytes) -> list[torch.Tensor] | str:
        """The crops of one image, or the reason it was rejected (counted and logged)."""
        if not data:
            return self.reject(key, "not_image", "zero bytes")
        start = time.perf_counter()
        try:
            crops = self.multicrop(data)
        except ImageRejected as exc:
            return self.reject(key, exc.reason, exc.detail)
        except Exception as exc:  # a decoder bug must not stop the stream: count it as corrupt
            if self.log.error("unexpected", "unexpected error decoding %s: %r", key, exc):
                logger.debug("traceback", exc_info=True)
            return self.reject(key, "corrupt", type(exc).__name__, log=False)
        self.meter.decode_seconds.observe(time.perf_counter() - start)
        return crops

    def reject(self, key: str, reason: str, detail: str = "", *, log: bool = True) -> str:
        """Counts one skipped object (metric; an unknown reason as ``corrupt``), logs it at the
        rate limit unless already logged where it failed, and returns the reason."""
        if reason not in REASONS:
            reason, detail = "corrupt", f"{reason} {detail}".strip()
        self.meter.failures.inc(1, {"reason": reason})
        if log:
            self.log.warning(reason, "skipping %s: %s %s", key, reason, detail)
        return reason

    def process_fetched(self, items: Iterable[tuple[str, bytes | None, str | None]]
                        ) -> IngestResult:
        """Crops fetched objects (:class:`Fetched` or ``(key, data, reason)``); those carrying a
        reason are counted (once: their fetch logged them) and skipped."""
        samples: list[list[torch.Tensor]] = []
        result = IngestResult({})
        for key, data, reason in items:
            out = self.reject(key, reason, log=False) if reason else self.crop(key, data or b"")
            if isinstance(out, str):
                result.rejected.append((key, out))
            else:
                samples.append(out)
                result.keys.append(key)
        if samples:
            self.meter.images.inc(len(samples))
        result.batch = collate_crops(samples, self.recipe) if samples else empty_batch(self.recipe)
        return result

    def process_bytes(self, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]]
                      ) -> IngestResult:
        """Crops in-memory objects (benchmark, tests): the byte-size guard, then decode + crop."""
        pairs = items.items() if isinstance(items, Mapping) else items
        return self.process_fetched(
            size_guard(key, data, self.max_object_bytes, self.log) for key, data in pairs)


class IngestActor:
    """The ``map_batches`` callable of the pool: a :class:`Cropper` that lives as long as the
    run (fixed-size pool, one execution)."""

    def __init__(self, cfg: SeerConfig) -> None:
        self.cropper = Cropper(cfg)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """A read block's rows ``{key, data, reason}`` → numpy crop columns ``crops_<size>``."""
        rows = zip(batch["key"], batch["data"], batch["reason"])
        return self.cropper.process_fetched(
            (str(key), None if reason else bytes(data), str(reason) or None)
            for key, data, reason in rows).numpy()
