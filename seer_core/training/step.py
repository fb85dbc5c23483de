"""One SwAV training step, the same for Ray Train workers, benchmarks and tests (numerics: see
the package docstring).

A skipped step leaves no trace: one sample that overflows turns the whole loss NaN, and whatever
that step computed must not outlive it. So the SwAV queue is pushed only once every rank has
been found finite, the BatchNorm running statistics the forward already updated are put back,
and the optimizer, the grad scaler and the LR schedule (which counts optimizer updates) are not
touched. Only `step` and `images_seen` advance: they count batches consumed from the stream. The
prototypes' L2 normalisation survives, but it is idempotent and every step starts with it.

Under fp16 the grad scaler skips updates of its own (a finite loss whose scaled gradients
overflow): the step is then reported `skipped` (with `overflow`), the schedule does not advance
and the bad-step count is not reset. It is not a bad step either: halving the scale until the
gradients fit is the scaler's normal work, and counting it against `train.max_bad_steps` would
roll healthy runs back. Only a skip that leaves the scale below `MIN_LOSS_SCALE`, where no scale
makes the gradients fit, counts as bad, so a run whose gradients are inf/NaN in themselves rolls
back instead of stalling while the scale slides to zero. The queue push and the BatchNorm
statistics of such a step stay: the loss was finite, so they are sound."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import nullcontext

import torch
import torch.distributed as dist

from seer_core.augment import crops_to_groups, normalize
from seer_core.distributed import rank_and_world
from seer_core.models import RunningStats
from seer_core.optim import set_lr
from seer_core.swav import (
    cancel_prototype_gradients,
    effective_rank,
    prototype_usage_entropy,
    swav_loss,
)
from seer_core.training.state import (
    StepResult,
    TrainState,
    is_log_step,
    photometric_strength,
    unwrap,
)

#: A grad-scaler skip that leaves the loss scale below this counts as a bad step. At 2**-24
#: (float16's smallest subnormal) every float16 gradient under 1 underflows to zero: gradients
#: that still overflow are inf/NaN in themselves, and no further halving can help. A healthy
#: run never gets near it (its scale stays within a few powers of two of 2**16); from the
#: default 2**16 it takes 41 skips with no update in between.
MIN_LOSS_SCALE = 2.0**-24


def prepare_inputs(state: TrainState, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """uint8 crops (the wire format) → normalised float groups on the device, crop-major."""
    groups = crops_to_groups(batch, state.recipe)
    strength = photometric_strength(state.cfg, state.step)
    out = []
    for g in groups:
        g = torch.as_tensor(g).to(state.device, non_blocking=True)
        if state.photometric is not None:
            x = normalize(state.photometric(g.float().div_(255), generator=state.generator,
                                            strength=strength))
        else:
            x = normalize(g)
        if state.cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(x)
    return out


def batch_size_of(batch: Mapping[str, torch.Tensor]) -> int:
    return int(next(iter(batch.values())).shape[0])


def train_step(state: TrainState, batch: Mapping[str, torch.Tensor]) -> StepResult:
    """normalise → forward per resolution group → SwAV loss → backward → freeze prototypes →
    LARS step → schedule. Returns the loss averaged over every rank."""
    start = time.perf_counter()
    cfg = state.cfg
    model = unwrap(state.model)
    bsz = batch_size_of(batch)
    groups = prepare_inputs(state, batch)
    n_crops = state.recipe.n_crops
    model.head.normalize_prototypes()
    state.model.train()
    running_stats = state.running_stats
    if running_stats is None or not running_stats.current():
        running_stats = state.running_stats = RunningStats(model)
    running_stats.save()  # queued on the device: no host sync

    autocast = (torch.autocast(state.device.type, dtype=state.amp_dtype)
                if state.amp_dtype is not None else nullcontext())
    with autocast:
        embedding, scores = state.model(groups)

    loss_start = time.perf_counter()
    with torch.autocast(state.device.type, enabled=False):
        prototypes = model.head.prototype_parameters()
        losses = []
        for head_scores, weight in zip(scores, prototypes):
            queue_scores = state.queue.scores(weight) if state.queue is not None else None
            losses.append(
                swav_loss(
                    head_scores.float(),
                    n_crops,
                    crops_for_assign=tuple(cfg.swav.crops_for_assign),
                    temperature=cfg.swav.temperature,
                    epsilon=cfg.swav.epsilon,
                    sinkhorn_iterations=cfg.swav.sinkhorn_iterations,
                    queue_scores=queue_scores,
                    global_local_alpha=cfg.swav.global_local_alpha,
                    n_global_crops=state.recipe.n_global,
                )
            )
        loss = torch.stack(losses).mean()
        with torch.no_grad():
            a = cfg.swav.crops_for_assign[0]
            first = scores[0][a * bsz : (a + 1) * bsz].float()
            usage = prototype_usage_entropy(torch.softmax(first / cfg.swav.temperature, dim=1))
            # Only on the steps the driver prints (an SVD on the host each step is wasted work).
            embedding_rank = (effective_rank(embedding[a * bsz : (a + 1) * bsz])
                              if is_log_step(state.step + 1, cfg)
                              else float("nan"))
    if state.device.type == "cuda":
        torch.cuda.synchronize(state.device)
    loss_seconds = time.perf_counter() - loss_start

    # One collective decides for every rank: the mean loss (for the schedule and the logs) and
    # whether any rank saw a non-finite loss (then every rank skips the update together).
    _, world = rank_and_world()
    stats = torch.stack([loss.detach().float(), (~torch.isfinite(loss.detach())).float()])
    if world > 1:
        dist.all_reduce(stats)
    mean_loss = float(stats[0]) / world
    skipped = bool(stats[1] > 0)
    overflow = False
    loss_scale = state.scaler.get_scale() if state.scaler is not None else None

    if skipped:
        # Undo what the forward already did; the queue, optimizer, scaler and schedule were
        # not touched. Every rank takes this branch together (the flag was all-reduced).
        running_stats.restore()
        state.optimizer.zero_grad(set_to_none=True)
        state.bad_steps += 1
        lr = state.schedule.lr
    else:
        # Only now, when no rank saw a non-finite loss: a NaN row would poison every step
        # until it aged out of the queue (and be saved by a checkpoint meanwhile).
        if state.queue is not None:
            state.queue.push(embedding, bsz, state.step)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
        else:
            loss.backward()
        cancel_prototype_gradients(prototypes, state.step, cfg.swav.freeze_prototypes_steps)
        if state.scaler is not None:
            overflow, loss_scale = scaler_step(state.scaler, state.optimizer)
        else:
            state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        if overflow:  # the scaler skipped the update: see the module docstring
            skipped = True
            if loss_scale is not None and loss_scale < MIN_LOSS_SCALE:
                state.bad_steps += 1
            lr = state.schedule.lr
        else:
            state.bad_steps = 0
            lr = state.schedule.step(mean_loss)

    state.step += 1
    state.images_seen += bsz * world
    set_lr(state.optimizer, lr)
    return StepResult(
        loss=mean_loss,
        lr=lr,
        skipped=skipped,
        overflow=overflow,
        loss_scale=loss_scale,
        step=state.step,
        images_seen=state.images_seen,
        usage_entropy=usage,
        embedding_rank=embedding_rank,
        seconds=time.perf_counter() - start,
        loss_seconds=loss_seconds,
    )


def scaler_step(scaler: torch.amp.GradScaler,
                optimizer: torch.optim.Optimizer) -> tuple[bool, float]:
    """`scaler.step` + `update`: (whether the scaler skipped the update, the new loss scale).

    The scaler says it skipped only through its scale: `update` multiplies it by the backoff
    factor (< 1) exactly when the step found inf/NaN gradients, and grows or keeps it otherwise
    (the idiom of Hugging Face Accelerate's `optimizer_step_was_skipped`). Under DDP the
    gradients were all-reduced by the backward, so every rank finds the same and takes the same
    branch with no collective of its own. Each read of the scale is a host sync, but
    `scaler.step` waits for the backward anyway (it reads its inf flags to decide the step).
    """
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    after = scaler.get_scale()
    return after < before, after
