"""The never-ending SwAV trainer on Ray Train: workers, rolling checkpoints, resume and faults.

Each worker takes batches of uint8 crops from its shard of the ingest stream, pass after pass,
for ever, and runs seer_core's train step. Everything that decides *when* something happens
(checkpoint now, stop now) is decided on rank 0 and broadcast, because `ray.train.report` is a
barrier that every rank must reach equally often, and wall clocks differ between machines.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer

from seer_core.augment import MultiCropRecipe
from seer_core.checkpoint import (
    STATE_FILE,
    CheckpointLoadError,
    load_state,
    save_state,
    step_dir_name,
)
from seer_core.config import SeerConfig, config_from_dict
from seer_core.swav import collapse_suspected
from seer_core.training import (
    StepResult,
    TrainState,
    build_train_state,
    load_state_dict,
    state_dict,
    train_step,
)
from services.storage import META_FILE, RunStorage, resolve_storage
from services.train_metrics import TrainMetrics

log = logging.getLogger("seer.trainer")


class NonFiniteLossError(RuntimeError):
    """Raised on every rank together after repeated non-finite losses.

    Ray Train's FailureConfig(max_failures=-1) then restarts the worker group from the newest
    checkpoint: the rollback uses the same path as any other worker failure.
    """


# --------------------------------------------------------------------------------------------
# Batches


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


# --------------------------------------------------------------------------------------------
# Decisions taken on rank 0 and broadcast


class Decider:
    """Checkpoint / stop decisions of rank 0, shared with every rank by one broadcast."""

    def __init__(self, cfg: SeerConfig, rank: int, world: int, device: torch.device,
                 control: Any) -> None:
        self.cfg = cfg
        self.rank = rank
        self.world = world
        self.device = device
        self.control = control
        self.started = time.monotonic()
        self.last_checkpoint = time.monotonic()
        self.last_poll = 0.0
        self.stop_reason: str | None = None

    def _poll_control(self) -> str | None:
        if self.control is None or time.monotonic() - self.last_poll < 1.0:
            return None
        self.last_poll = time.monotonic()
        import ray

        try:
            return ray.get(self.control.stop_reason.remote(), timeout=5)
        except Exception:  # the driver went away: keep training, the job owns our lifetime
            return None

    def decide(self, step: int) -> tuple[bool, bool]:
        """(checkpoint now, stop now) — identical on every rank."""
        flags = torch.zeros(2, dtype=torch.int64)
        if self.rank == 0:
            cfg = self.cfg
            minutes = (time.monotonic() - self.started) / 60
            reason = None
            if cfg.train.max_steps and step >= cfg.train.max_steps:
                reason = f"reached train.max_steps={cfg.train.max_steps}"
            elif cfg.train.max_minutes and minutes >= cfg.train.max_minutes:
                reason = f"reached train.max_minutes={cfg.train.max_minutes}"
            else:
                reason = self._poll_control()
            due_minutes = cfg.checkpoint.every_minutes and (
                time.monotonic() - self.last_checkpoint >= cfg.checkpoint.every_minutes * 60
            )
            flags[0] = int(step % cfg.checkpoint.every_steps == 0 or bool(due_minutes))
            flags[1] = int(reason is not None)
            self.stop_reason = reason
        if self.world > 1:
            on_device = flags.to(self.device)
            dist.broadcast(on_device, src=0)
            flags = on_device.cpu()
        checkpoint, stop = bool(flags[0]), bool(flags[1])
        if checkpoint or stop:
            self.last_checkpoint = time.monotonic()
        return checkpoint, stop


# --------------------------------------------------------------------------------------------
# Checkpoints through ray.train.report


def _queue_file(rank: int) -> str:
    return f"queue_rank{rank:05d}.pt"


def report_checkpoint(state: TrainState, rank: int, result: StepResult | None,
                      extra: Mapping[str, float] | None = None) -> None:
    """Every rank calls this together: rank 0 writes the state, each rank its own queue."""
    import ray.train

    metrics = {
        "step": state.step,
        "images_seen": state.images_seen,
        "loss": result.loss if result else float("nan"),
        "lr": result.lr if result else state.schedule.lr,
        **(extra or {}),
    }
    with tempfile.TemporaryDirectory(prefix="seer-ckpt-") as tmp:
        wrote = False
        if rank == 0:
            save_state(state_dict(state), Path(tmp) / STATE_FILE)
            meta = {**metrics, "time": time.time(), "run_name": state.cfg.checkpoint.run_name}
            (Path(tmp) / META_FILE).write_text(json.dumps(meta))
            wrote = True
        if state.queue is not None:
            save_state(state.queue.state_dict(), Path(tmp) / _queue_file(rank))
            wrote = True
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if wrote else None
        ray.train.report(metrics, checkpoint=checkpoint,
                         checkpoint_dir_name=step_dir_name(state.step))


def checkpoints_newest_first(cfg: SeerConfig, rank: int, world: int) -> list[str]:
    """Complete checkpoints in the run's storage, newest first, as rank 0 sees them.

    Not `ray.train.get_checkpoint()`: Ray hands a restarted group the newest checkpoint its
    controller has *registered*, and a worker killed moments after reporting leaves a complete,
    newer checkpoint that was never registered (seen in tests). Ray writes into this same
    storage, so the listing covers its checkpoints too, and nothing written is thrown away.
    Rank 0 lists and broadcasts so that every rank loads the same one.
    """
    choice: list[list[str]] = [[]]
    if rank == 0:
        choice[0] = [path for _, path in reversed(storage_for(cfg).list_checkpoints())]
    if world > 1:
        dist.broadcast_object_list(choice, src=0)
    return choice[0]


def restore(state: TrainState, rank: int, world: int) -> str | None:
    """Loads the newest loadable checkpoint (an unreadable one, e.g. cut short by a crash while
    it was copied, is skipped with an error). Returns its path, or None for a fresh start."""
    import ray.train

    filesystem = storage_for(state.cfg).filesystem
    for path in checkpoints_newest_first(state.cfg, rank, world):
        checkpoint = ray.train.Checkpoint(path=path, filesystem=filesystem)
        try:
            with checkpoint.as_directory() as directory:
                saved = load_state(Path(directory) / STATE_FILE, map_location="cpu")
                queue_path = Path(directory) / _queue_file(rank)
                queue = load_state(queue_path) if queue_path.is_file() else None
        except (CheckpointLoadError, OSError) as exc:
            log.error("rank %d: skipping unreadable checkpoint %s: %s", rank, path, exc)
            continue
        load_state_dict(state, saved)
        if state.queue is not None:
            if queue is not None:
                state.queue.load_state_dict(queue, strict=False)
            else:
                log.warning("no saved queue for rank %d in %s: it starts empty", rank, path)
        return path
    return None


# --------------------------------------------------------------------------------------------
# The training function of every worker


def train_loop_per_worker(loop_config: Mapping[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from services.control import find_control

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = config_from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    state = build_train_state(cfg, device, wrap=ray.train.torch.prepare_model)
    source = restore(state, rank, world)
    resumed: dict[str, float] = {}
    if source:
        resumed = {"resumed_step": state.step, "resumed_lr": state.schedule.lr,
                   "resumed_queue_filled": state.queue.filled if state.queue else 0}
        if rank == 0:
            log.info("resumed from %s at step %d (%d images seen)", source, state.step,
                     state.images_seen)

    metrics = TrainMetrics(rank)
    control = find_control(cfg.checkpoint.run_name) if rank == 0 else None
    decider = Decider(cfg, rank, world, device, control)
    n_prototypes = cfg.model.prototypes[0]
    batches = (
        synthetic_batches(cfg, state.recipe, cfg.train.seed + rank)
        if loop_config.get("synthetic")
        else stream_batches(cfg, state.recipe)
    )

    result: StepResult | None = None
    run_meter = RunMeter(skip_steps=2)
    window_start = time.perf_counter()
    window_images = 0
    window_wait = 0.0
    last_checkpoint_step = state.step if source else -1
    wait_start = time.perf_counter()
    for batch in batches:
        data_wait = time.perf_counter() - wait_start
        result = train_step_with_metrics(state, batch, metrics, data_wait)
        window_images += len_batch(batch) * world
        window_wait += data_wait
        run_meter.add(len_batch(batch) * world, data_wait)

        if result.skipped:
            log.error("rank %d: non-finite loss at step %d (%d in a row)", rank, result.step,
                      state.bad_steps)
            if state.bad_steps >= cfg.train.max_bad_steps:
                raise NonFiniteLossError(
                    f"{state.bad_steps} non-finite losses in a row at step {state.step}: "
                    "rolling back to the newest checkpoint"
                )
        # Loss starts above ln K at initialisation: judge collapse only once the model has had
        # its warmup and its prototypes have been free to move for a while.
        settled = result.step > max(cfg.schedule.warmup_steps, cfg.swav.freeze_prototypes_steps)
        if settled and result.step % max(1, 10 * cfg.train.log_every_steps) == 0 and (
            not result.skipped
        ):
            suspected = collapse_suspected(result.loss, n_prototypes) or (
                result.usage_entropy < 0.05
            )
            metrics.collapse_warning(suspected)
        else:
            suspected = False
        if suspected and rank == 0:
            log.warning("collapse suspected at step %d: loss %.4f (ln K = %.4f), usage entropy "
                        "%.3f", result.step, result.loss, math.log(n_prototypes),
                        result.usage_entropy)

        checkpoint_now, stop_now = decider.decide(state.step)
        if checkpoint_now or stop_now:
            report_checkpoint(state, rank, result, {**resumed, **run_meter.summary()})
            last_checkpoint_step = state.step
            metrics.checkpointed(state.step)
        if rank == 0 and result.step % cfg.train.log_every_steps == 0:
            elapsed = time.perf_counter() - window_start
            progress = {
                "step": result.step,
                "images_seen": result.images_seen,
                "loss": result.loss,
                "lr": result.lr,
                "images_per_second": window_images / elapsed if elapsed > 0 else 0.0,
                "data_wait_share": window_wait / elapsed if elapsed > 0 else 0.0,
                "usage_entropy": result.usage_entropy,
                "last_checkpoint_step": last_checkpoint_step,
            }
            metrics.throughput(progress["images_per_second"])
            if control is not None:
                control.report.remote(progress)
            window_start, window_images, window_wait = time.perf_counter(), 0, 0.0

        if stop_now:
            if rank == 0:
                log.info("stopping at step %d: %s", state.step, decider.stop_reason)
            return
        wait_start = time.perf_counter()


class RunMeter:
    """Throughput and data-wait share over the run so far, past the first (warm-up) steps."""

    def __init__(self, skip_steps: int) -> None:
        self.skip = skip_steps
        self.start = 0.0
        self.images = 0
        self.wait = 0.0

    def add(self, images: int, wait: float) -> None:
        if self.skip > 0:
            self.skip -= 1
            if self.skip == 0:
                self.start = time.perf_counter()
            return
        self.images += images
        self.wait += wait

    def summary(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start if self.start else 0.0
        if elapsed <= 0 or not self.images:
            return {}
        return {"run_images_per_second": self.images / elapsed,
                "run_data_wait_share": self.wait / elapsed}


def len_batch(batch: Mapping[str, torch.Tensor]) -> int:
    return int(next(iter(batch.values())).shape[0])


def train_step_with_metrics(state: TrainState, batch: Mapping[str, torch.Tensor],
                            metrics: TrainMetrics, data_wait: float) -> StepResult:
    result = train_step(state, batch)
    metrics.observe(state, result, data_wait)
    return result


# --------------------------------------------------------------------------------------------
# The driver


def storage_for(cfg: SeerConfig) -> RunStorage:
    return resolve_storage(cfg.checkpoint.storage, cfg.checkpoint.run_name,
                           cfg.checkpoint.endpoint_url)


def build_trainer(cfg: SeerConfig, *, synthetic: bool = False) -> TorchTrainer:
    """The TorchTrainer for a config; `fit()` runs until a stop condition or a stop request."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    storage = storage_for(cfg)
    datasets = None
    dataset_config = None
    if not synthetic:
        from services.stream import dataset_factory, execution_options

        datasets = {"train": dataset_factory(cfg)}
        dataset_config = DataConfig(execution_options=execution_options(cfg))
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "synthetic": synthetic},
        torch_config=TorchConfig(timeout_s=int(cfg.train.collective_timeout_s)),
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=cfg.checkpoint.run_name,
            storage_path=storage.root,
            storage_filesystem=storage.filesystem,
            failure_config=FailureConfig(max_failures=-1),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            worker_runtime_env={"env_vars": _forwarded_env()},
        ),
        datasets=datasets,
        dataset_config=dataset_config,
    )


def _forwarded_env() -> dict[str, str]:
    """Endpoint settings the workers need (never credentials: those come from the chain)."""
    names = ("SEER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
             "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")
    return {n: os.environ[n] for n in names if n in os.environ}
