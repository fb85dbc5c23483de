"""The trainer's Prometheus metrics (exported by Ray from inside the worker processes), named as
DESIGN §3 says; the only tag is the worker's rank, bounded by the cluster size. Counters count
what *this* worker did, so dashboards sum over workers (`sum(rate(seer_train_images_total[5m]))`
is the global throughput); gauges of the whole run (loss averaged over ranks, LR, step) are the
same on every worker: take `max`, never `sum`.
"""

from __future__ import annotations

import math
import time
from typing import Any

from services import metrics

STEP_SECONDS_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
WAIT_SECONDS_BUCKETS = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30]
TAGS = ("worker",)


class TrainMetrics:
    """One worker's metrics; `observe` is called once per step, cheaply (no device sync)."""

    steps = metrics.counter("seer_train_steps_total", "optimizer steps taken", TAGS)
    images = metrics.counter(
        "seer_train_images_total",
        "images this worker trained on (skipped steps excluded; sum over workers = global)", TAGS)
    skipped = metrics.counter(
        "seer_train_skipped_steps_total",
        "steps without an update: a non-finite loss, or fp16 gradients the grad scaler "
        "found inf/NaN (the loss scale dropped)", TAGS)
    step_seconds = metrics.histogram(
        "seer_train_step_seconds", "wall time of one train step", STEP_SECONDS_BUCKETS, TAGS)
    data_wait = metrics.histogram(
        "seer_train_data_wait_seconds", "time the worker waited for its next batch",
        WAIT_SECONDS_BUCKETS, TAGS)
    loss = metrics.gauge("seer_train_loss", "SwAV loss, averaged over ranks", TAGS)
    lr = metrics.gauge("seer_train_lr", "current learning rate", TAGS)
    entropy = metrics.gauge(
        "seer_train_prototype_entropy_ratio", "prototype usage entropy / ln K (near 0: collapse)",
        TAGS)
    embedding_rank = metrics.gauge(
        "seer_train_embedding_rank",
        "effective rank of the batch's embeddings (near 1: dimensional collapse)", TAGS)
    queue_fill = metrics.gauge("seer_train_queue_fill_ratio", "SwAV queue fill", TAGS)
    images_per_second = metrics.gauge(
        "seer_train_images_per_second", "global training throughput", TAGS)
    step = metrics.gauge("seer_train_step", "current step", TAGS)
    checkpoint_step = metrics.gauge(
        "seer_train_checkpoint_step",
        "step of the run's newest committed checkpoint (seer_train_step never goes below it)",
        TAGS)
    world_size = metrics.gauge(
        "seer_train_world_size", "workers in the group now (elastic: between min and max)", TAGS)
    store_wait = metrics.gauge(
        "seer_train_store_wait_seconds",
        "how long this worker has been waiting for an unreachable checkpoint store (0: not)",
        TAGS)
    checkpoint_pause = metrics.histogram(
        "seer_train_checkpoint_pause_seconds",
        "step-loop pause per checkpoint (copy to host memory; the upload runs beside)",
        STEP_SECONDS_BUCKETS, TAGS)
    checkpoint_time = metrics.gauge(
        "seer_train_checkpoint_timestamp_seconds",
        "unix time of the newest checkpoint (age = time() - this)", TAGS)
    collapse = metrics.gauge(
        "seer_train_collapse_suspected_ratio", "1 when collapse is suspected", TAGS)
    loss_scale = metrics.gauge(
        "seer_train_loss_scale",
        "fp16 grad scaler's loss scale (halved at each overflow skip); absent without fp16", TAGS)

    def __init__(self, rank: int) -> None:
        self.tags = {"worker": str(rank)}
        self.store_wait_seconds = 0.0

    def committed(self, step: int) -> None:
        """The run's newest committed checkpoint: after each commit (rank 0) and at resume
        (every rank), so a step that goes below it (a rewind) is visible and alerted on."""
        self.checkpoint_step.set(step, self.tags)
        self.checkpoint_time.set(time.time(), self.tags)

    def store_waiting(self, seconds: float) -> None:
        """Called by whoever waits (the restore, the checkpoint writer's thread); `observe`
        re-exports the value every step, so the series exists (0) on a healthy run too."""
        self.store_wait_seconds = seconds
        self.store_wait.set(seconds, self.tags)

    def observe(self, state: Any, result: Any, data_wait: float, local_images: int) -> None:
        """Records one step; `local_images` is this worker's share of the global batch."""
        tags = self.tags
        self.steps.inc(1, tags)
        self.step.set(result.step, tags)
        self.step_seconds.observe(result.seconds, tags)
        self.store_wait.set(self.store_wait_seconds, tags)
        self.data_wait.observe(data_wait, tags)
        if result.loss_scale is not None:
            self.loss_scale.set(result.loss_scale, tags)
        if result.skipped:
            self.skipped.inc(1, tags)
            return
        self.images.inc(local_images, tags)
        self.loss.set(result.loss, tags)
        self.lr.set(result.lr, tags)
        self.entropy.set(result.usage_entropy, tags)
        if math.isfinite(result.embedding_rank):
            self.embedding_rank.set(result.embedding_rank, tags)
        if state.queue is not None and state.queue.length:
            self.queue_fill.set(state.queue.filled / state.queue.length, tags)
