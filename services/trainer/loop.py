"""The training function every Ray Train worker runs, for ever or until told to stop, and the
guard around it that records how it failed.

Ray Train restarts a failed worker group for ever; whether that is right depends on the failure
(`services.driver.control`). Each worker tells the run's control actor about an exception before
re-raising it. Once the same failure has repeated `train.max_repeated_failures` times the actor
calls it fatal; the next group returns at once, so `fit()` ends without aborting anything, and the
driver turns the reason into a clear error and a non-zero exit. Two failures are fatal at once,
as a restart could only meet them again: the checkpoint store unreachable for longer than
`checkpoint.store_grace_minutes`, and a run whose committed checkpoints are all unusable.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import torch

from seer_core.config import SeerConfig, config_from_dict
from seer_core.training import (
    StepResult,
    TrainState,
    build_train_state,
    is_log_step,
    train_step,
)
from services.driver.control import failure_signature, find_control, relay_warnings
from services.train_metrics import TrainMetrics
from services.trainer.batches import stream_batches, synthetic_batches
from services.trainer.checkpoint_writer import CheckpointWriter
from services.trainer.checkpoints import NoUsableCheckpoint, restore, storage_for
from services.trainer.collective import StoreUnavailable
from services.trainer.decisions import (
    Decider,
    RunMeter,
    WarningThrottle,
    check_non_finite,
    collapse_verdict,
    skip_note,
)

log = logging.getLogger("seer.trainer")


def train_loop_per_worker(loop_config: Mapping[str, Any]) -> None:
    """Trains until a limit or a stop request, checkpointing as the Decider says.

    A checkpoint or stop decided on a skipped (non-finite) step is deferred to the next finite
    step: no checkpoint of a bad step, and a stop ends with a fresh checkpoint of a good state
    (stopping at once would throw away every step since the last one). If the bad steps go on,
    `train.max_bad_steps` rolls the group back first and the stop is honoured after the restart.
    Skips, deferrals and the report are identical on every rank (all-reduced skip flag,
    broadcast decision).
    """
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = config_from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # An elastic group ([min, max]) runs with the workers Ray Train could get: from here on the
    # config names that world size, so the global batch and the scaled LR are those used.
    cfg.train.num_workers = world
    relay_warnings(cfg.checkpoint.run_name, f"rank {rank}")
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    state = build_train_state(cfg, device, wrap=ray.train.torch.prepare_model)
    metrics = TrainMetrics(rank)
    source = restore(state, rank, world, on_wait=metrics.store_waiting)
    resumed: dict[str, float] = {}
    if source:
        resumed = {"resumed_step": state.step, "resumed_lr": state.schedule.lr,
                   "resumed_queue_filled": state.queue.filled if state.queue else 0}
        if rank == 0:
            log.info("resumed from %s at step %d (%d images seen)", source, state.step,
                     state.images_seen)
            _log_world_change(cfg, storage_for(cfg).read_meta(source).get("world_size"), world)
        metrics.committed(state.step)
    metrics.world_size.set(world, metrics.tags)
    writer = CheckpointWriter(
        storage_for(cfg), rank, world, device, keep=cfg.checkpoint.keep,
        grace_s=cfg.checkpoint.store_grace_minutes * 60, on_wait=metrics.store_waiting,
        on_commit=metrics.committed if rank == 0 else lambda _step: None)
    try:
        _train(cfg, state, rank, world, device, source, resumed, metrics, writer,
               synthetic=bool(loop_config.get("synthetic")))
    finally:
        writer.close()


def _train(cfg: SeerConfig, state: TrainState, rank: int, world: int, device: torch.device,
           source: str | None, resumed: dict[str, float], metrics: TrainMetrics,
           writer: CheckpointWriter, synthetic: bool) -> None:
    control = find_control(cfg.checkpoint.run_name) if rank == 0 else None
    decider = Decider(cfg, rank, world, device, control)
    batches = (
        synthetic_batches(cfg, state.recipe, cfg.train.seed + rank)
        if synthetic
        else stream_batches(cfg, state.recipe)
    )

    result: StepResult | None = None
    run_meter = RunMeter(skip_steps=2)
    collapse_warnings = WarningThrottle()
    window_start = time.perf_counter()
    window_images = 0
    window_wait = 0.0
    checkpoint_due = stop_due = False
    skipped_steps = 0
    wait_start = time.perf_counter()
    for batch in batches:
        data_wait = time.perf_counter() - wait_start
        result = train_step(state, batch)
        local_images = int(next(iter(batch.values())).shape[0])
        metrics.observe(state, result, data_wait, local_images=local_images)
        window_images += local_images * world
        window_wait += data_wait
        run_meter.add(local_images * world, data_wait)
        writer.poll()  # commits the checkpoint in flight once every rank has uploaded it

        if result.skipped:
            skipped_steps += 1
            note = skip_note(result, state.bad_steps)
            if note is not None:
                log.error("rank %d: %s", rank, note)
            check_non_finite(state.bad_steps, state.step, cfg)
        verdict = collapse_verdict(result, cfg)
        if verdict is not None:
            metrics.collapse.set(float(verdict), metrics.tags)
        if verdict is not None and collapse_warnings.should_warn(verdict) and rank == 0:
            log.warning("collapse suspected at step %d: loss %.4f (ln K = %.4f), usage entropy "
                        "%.3f", result.step, result.loss, math.log(cfg.model.prototypes[0]),
                        result.usage_entropy)

        checkpoint_now, stop_now = decider.decide(state.step)
        checkpoint_due |= checkpoint_now
        stop_due |= stop_now
        if result.skipped and (checkpoint_due or stop_due):
            if rank == 0:
                log.warning("step %d was skipped: checkpoint/stop deferred to the next finite "
                            "step", result.step)
        elif checkpoint_due or stop_due:
            summary = {"step": state.step, "images_seen": state.images_seen,
                       "loss": result.loss, "lr": result.lr, **resumed,
                       **run_meter.summary(), "skipped_steps": skipped_steps}
            metrics.checkpoint_pause.observe(writer.start(state, summary), metrics.tags)
            checkpoint_due = False
        if rank == 0 and is_log_step(result.step, cfg):
            elapsed = time.perf_counter() - window_start
            progress = {
                "step": result.step,
                "images_seen": result.images_seen,
                "loss": result.loss,
                "lr": result.lr,
                "images_per_second": window_images / elapsed if elapsed > 0 else 0.0,
                "data_wait_share": window_wait / elapsed if elapsed > 0 else 0.0,
                "usage_entropy": result.usage_entropy,
                "embedding_rank": result.embedding_rank,
                "world_size": world,
                "last_checkpoint_step": writer.committed_step if writer.committed_step >= 0
                else (state.step if source else -1),
            }
            metrics.images_per_second.set(progress["images_per_second"], metrics.tags)
            if control is not None:
                control.report.remote(progress)
            window_start, window_images, window_wait = time.perf_counter(), 0, 0.0

        if stop_due and not result.skipped:
            writer.finish()  # the final checkpoint is committed before the workers return
            if rank == 0:
                log.info("stopping at step %d: %s", state.step, decider.stop_reason)
            return
        wait_start = time.perf_counter()


def _log_world_change(cfg: SeerConfig, before: int | None, world: int) -> None:
    """The LR follows the global batch actually used (linear scaling): say so when it moves."""
    if not isinstance(before, int) or before == world:
        return
    log.warning("world size %d -> %d worker(s): global batch %d -> %d, base LR %.5g -> %.5g "
                "(linear in the global batch, optim.lr_reference_batch=%d)", before, world,
                cfg.global_batch(before), cfg.global_batch(world), cfg.scaled_lr(before),
                cfg.scaled_lr(world), cfg.optim.lr_reference_batch)


def guarded_train_loop(loop_config: Mapping[str, Any]) -> None:
    """`train_loop_per_worker`, unless the control actor called the run fatal; a failure is
    reported to the control actor before it is re-raised."""
    import ray

    control = find_control(config_from_dict(loop_config["config"]).checkpoint.run_name)
    reason = None if control is None else ray.get(control.fatal.remote(), timeout=60)
    if reason is not None:
        log.error("not training: %s", reason)
        return
    try:
        train_loop_per_worker(loop_config)
    except Exception as exc:
        if control is not None:
            report_failure(control, exc)
        raise


def report_failure(control: Any, exc: BaseException) -> None:
    """Best effort: a failure to report must not hide the failure being reported."""
    import ray
    import ray.train

    try:
        rank, signature = ray.train.get_context().get_world_rank(), failure_signature(exc)
        if isinstance(exc, StoreUnavailable | NoUsableCheckpoint):
            ray.get(control.give_up.remote(signature), timeout=30)
            log.error("rank %d: the run cannot go on: %s", rank, signature)
            return
        count = ray.get(control.failed.remote(rank, signature), timeout=30)
        log.error("rank %d failed (%d time(s) in a row): %s", rank, count, signature)
    except Exception:  # the original exception is what matters; this one is only logged
        log.exception("could not report a worker failure to the control actor")
