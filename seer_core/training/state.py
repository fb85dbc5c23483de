"""What a training run carries between steps, and how it is built from a config.

`wrap` (Ray Train's prepare_model, or DDP) is applied last, so SyncBatchNorm conversion and
activation checkpointing happen on the bare model first, as DDP requires."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from seer_core.augment import (
    BatchPhotometric,
    MultiCropRecipe,
    resolve_recipe,
)
from seer_core.config import SeerConfig
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
)


def unwrap(model: nn.Module) -> SwAVModel:
    """The SwAVModel inside a DDP (or similar `.module`) wrapper."""
    while hasattr(model, "module") and not isinstance(model, SwAVModel):
        model = model.module
    assert isinstance(model, SwAVModel), type(model)
    return model


def rank_and_world() -> tuple[int, int]:
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
    return resolve_recipe(cfg.augment.recipe, cfg.augment.overrides())


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
    _, world = rank_and_world()
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
    generator.manual_seed(cfg.train.seed * 1000 + rank_and_world()[0])
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
