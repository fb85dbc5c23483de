"""One SwAV training step and the state it carries, usable with or without Ray.

The Ray Train workers, the benchmarks and the tests all drive this same function, so what is
measured and tested is what runs in production. It owns the numerics that are easy to get
subtly wrong: prototype normalisation before the forward, scores and Sinkhorn in float32 under
AMP, prototype gradients dropped during the freeze, a non-finite loss skipping the update on
every rank at once, and the LR decision taken from the loss averaged over all ranks.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from seer_core.augment import (
    RECIPES,
    BatchPhotometric,
    MultiCropRecipe,
    crops_to_groups,
    normalize,
)
from seer_core.config import SeerConfig, config_from_dict
from seer_core.models import (
    SwAVModel,
    build_swav_model,
    convert_sync_batchnorm,
    enable_activation_checkpointing,
)
from seer_core.optim import LARS, param_groups, set_lr
from seer_core.schedules import Schedule, build_schedule
from seer_core.swav import (
    SwAVQueue,
    cancel_prototype_gradients,
    prototype_usage_entropy,
    swav_loss,
)


def unwrap(model: nn.Module) -> SwAVModel:
    """The SwAVModel inside a DDP (or similar `.module`) wrapper."""
    while hasattr(model, "module") and not isinstance(model, SwAVModel):
        model = model.module
    assert isinstance(model, SwAVModel), type(model)
    return model


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a config value on a device (None: full precision).

    `auto` is bf16 on CPU and on GPUs that support it (no scaler needed, same range as fp32),
    fp16 on older GPUs (with a grad scaler).
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def recipe_for(cfg: SeerConfig) -> MultiCropRecipe:
    """The multi-crop recipe the config asks for, overrides applied (the trainer's view)."""
    from seer_core.augment import build_multicrop

    return build_multicrop(cfg.augment.recipe, **cfg.augment.overrides()).recipe


@dataclass
class TrainState:
    """Everything a step reads and writes, and everything a checkpoint must hold."""

    cfg: SeerConfig
    model: nn.Module
    optimizer: LARS
    schedule: Schedule
    queue: SwAVQueue | None
    scaler: torch.amp.GradScaler | None
    device: torch.device
    amp_dtype: torch.dtype | None
    photometric: BatchPhotometric | None
    recipe: MultiCropRecipe
    step: int = 0
    images_seen: int = 0
    bad_steps: int = 0
    generator: torch.Generator | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    loss: float
    lr: float
    skipped: bool
    step: int
    images_seen: int
    usage_entropy: float
    seconds: float
    loss_seconds: float


def build_train_state(
    cfg: SeerConfig,
    device: torch.device | str = "cpu",
    *,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainState:
    """Builds model, optimizer, schedule and queue from a validated config.

    `wrap` is applied last (Ray Train's `prepare_model`, or DDP) so SyncBatchNorm conversion and
    activation checkpointing happen on the bare model first, as DDP requires.
    """
    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    model = build_swav_model(
        cfg.model.trunk,
        cfg.model.head_hidden,
        cfg.model.head_out,
        cfg.model.head_batchnorm,
        cfg.model.prototypes,
    )
    if cfg.model.activation_checkpointing:
        enable_activation_checkpointing(model.trunk)
    if cfg.model.sync_bn_group_size:
        model = convert_sync_batchnorm(model, cfg.model.sync_bn_group_size)
    model = model.to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base_lr = cfg.scaled_lr()
    optimizer = LARS(
        param_groups(model, cfg.optim.weight_decay, cfg.optim.exclude_bias_and_norm),
        lr=base_lr,
        momentum=cfg.optim.momentum,
        eta=cfg.optim.eta,
        clip=cfg.optim.clip,
    )
    schedule = make_schedule(cfg)
    set_lr(optimizer, schedule.lr)
    wrapped = wrap(model) if wrap is not None else model
    _, world = _world()
    queue = None
    if cfg.swav.queue_length:
        queue = SwAVQueue(
            length=cfg.swav.queue_length,
            dim=cfg.model.head_out,
            crops_for_assign=tuple(cfg.swav.crops_for_assign),
            start_step=cfg.swav.queue_start_step,
            world_size=world,
            device=device,
        )
    amp_dtype = resolve_amp(cfg.train.amp, device)
    scaler = None
    if amp_dtype == torch.float16:
        scaler = torch.amp.GradScaler(device.type)
    photometric = BatchPhotometric().to(device) if cfg.augment.photometric_on_device else None
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.train.seed * 1000 + _world()[0])
    return TrainState(
        cfg=cfg,
        model=wrapped,
        optimizer=optimizer,
        schedule=schedule,
        queue=queue,
        scaler=scaler,
        device=device,
        amp_dtype=amp_dtype,
        photometric=photometric,
        recipe=recipe_for(cfg),
        generator=generator,
    )


def make_schedule(cfg: SeerConfig) -> Schedule:
    """The LR schedule of a config; fractions in the config are of the scaled base LR."""
    base = cfg.scaled_lr()
    s = cfg.schedule
    if s.name == "plateau_halving":
        return build_schedule(
            s.name,
            base_lr=base,
            warmup_steps=s.warmup_steps,
            patience=s.patience,
            min_delta=s.min_delta,
            smoothing=s.smoothing,
            cooldown=s.cooldown,
            min_lr=base * s.min_lr,
            factor=s.factor,
            start_lr=base * s.start_lr,
        )
    if s.name == "warmup_cosine":
        return build_schedule(
            s.name,
            base_lr=base,
            final_lr=base * s.final_lr,
            warmup_steps=s.warmup_steps,
            cosine_steps=s.cosine_steps,
            start_lr=base * s.start_lr,
        )
    return build_schedule(
        s.name, base_lr=base, warmup_steps=s.warmup_steps, start_lr=base * s.start_lr
    )


def prepare_inputs(state: TrainState, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """uint8 crops (the wire format) → normalised float groups on the device, crop-major."""
    groups = crops_to_groups(batch, state.recipe)
    out = []
    for g in groups:
        g = torch.as_tensor(g).to(state.device, non_blocking=True)
        if state.photometric is not None:
            x = normalize(state.photometric(g.float().div_(255), generator=state.generator))
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

    autocast = (
        torch.autocast(state.device.type, dtype=state.amp_dtype)
        if state.amp_dtype is not None
        else nullcontext()
    )
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
        if state.queue is not None:
            state.queue.push(embedding, bsz, state.step)
        with torch.no_grad():
            a = cfg.swav.crops_for_assign[0]
            first = scores[0][a * bsz : (a + 1) * bsz].float()
            usage = prototype_usage_entropy(torch.softmax(first / cfg.swav.temperature, dim=1))
    if state.device.type == "cuda":
        torch.cuda.synchronize(state.device)
    loss_seconds = time.perf_counter() - loss_start

    # One collective decides for every rank: the mean loss (for the schedule and the logs) and
    # whether any rank saw a non-finite loss (then every rank skips the update together).
    _, world = _world()
    stats = torch.stack([loss.detach().float(), (~torch.isfinite(loss.detach())).float()])
    if world > 1:
        dist.all_reduce(stats)
    mean_loss = float(stats[0]) / world
    skipped = bool(stats[1] > 0)

    if skipped:
        state.optimizer.zero_grad(set_to_none=True)
        state.bad_steps += 1
    else:
        state.bad_steps = 0
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
        else:
            loss.backward()
        cancel_prototype_gradients(prototypes, state.step, cfg.swav.freeze_prototypes_steps)
        if state.scaler is not None:
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)

    state.step += 1
    state.images_seen += bsz * world
    lr = state.schedule.step(None if skipped else mean_loss)
    set_lr(state.optimizer, lr)
    return StepResult(
        loss=mean_loss,
        lr=lr,
        skipped=skipped,
        step=state.step,
        images_seen=state.images_seen,
        usage_entropy=usage,
        seconds=time.perf_counter() - start,
        loss_seconds=loss_seconds,
    )


# --------------------------------------------------------------------------------------------
# Checkpoint state


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _python_rng_to_tensor(random.getstate()),
        "numpy": _numpy_rng_to_tensor(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_rng_to_tensor(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss}


def _numpy_rng_to_tensor() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
         npy["cached"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_dict(state: TrainState) -> dict[str, Any]:
    """Everything needed to continue as if nothing happened; plain data for weights_only."""
    return {
        "format": 1,
        "step": state.step,
        "images_seen": state.images_seen,
        "model": unwrap(state.model).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "schedule": state.schedule.state_dict(),
        "queue": state.queue.state_dict() if state.queue is not None else None,
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "generator": state.generator.get_state() if state.generator is not None else None,
        "rng": _rng_state(),
        "config": state.cfg.to_dict(),
    }


def load_state_dict(state: TrainState, saved: Mapping[str, Any]) -> None:
    """Restores a TrainState built from the same config."""
    unwrap(state.model).load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.schedule.load_state_dict(saved["schedule"])
    set_lr(state.optimizer, state.schedule.lr)
    if state.queue is not None and saved.get("queue") is not None:
        state.queue.load_state_dict(saved["queue"])
    if state.scaler is not None and saved.get("scaler") is not None:
        state.scaler.load_state_dict(saved["scaler"])
    if state.generator is not None and saved.get("generator") is not None:
        state.generator.set_state(saved["generator"])
    _restore_rng(saved["rng"])
    state.step = int(saved["step"])
    state.images_seen = int(saved["images_seen"])
    state.bad_steps = 0


def config_of(saved: Mapping[str, Any]) -> SeerConfig:
    """The validated config a checkpoint was written with."""
    return config_from_dict(saved["config"])


__all__ = [
    "RECIPES",
    "StepResult",
    "TrainState",
    "batch_size_of",
    "build_train_state",
    "config_of",
    "load_state_dict",
    "make_schedule",
    "prepare_inputs",
    "resolve_amp",
    "state_dict",
    "train_step",
    "unwrap",
]
