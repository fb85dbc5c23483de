"""What a training run carries between steps, and how it is built from a config.

`wrap` (Ray Train's prepare_model, or DDP) is applied last, so SyncBatchNorm conversion and
activation checkpointing happen on the bare model first, as DDP requires."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from seer_core.augment import BatchPhotometric, MultiCropRecipe, PhotometricParams, resolve_recipe
from seer_core.config import SeerConfig
from seer_core.distributed import rank_and_world
from seer_core.models import (
    RunningStats,
    SwAVModel,
    build_swav_model,
    convert_sync_batchnorm,
    enable_activation_checkpointing,
)
from seer_core.optim import LARS, load_state_keeping_hyperparameters, param_groups, set_lr
from seer_core.schedules import Schedule, build_schedule
from seer_core.swav import SwAVQueue

log = logging.getLogger("seer.training")


def unwrap(model: nn.Module) -> SwAVModel:
    """The SwAVModel inside a DDP (or similar `.module`) wrapper."""
    while hasattr(model, "module") and not isinstance(model, SwAVModel):
        model = model.module
    assert isinstance(model, SwAVModel), type(model)
    return model


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a config value on a device (None: full precision).

    `auto` is bf16 on CPU and on GPUs that support it (no scaler needed, same range as fp32),
    fp16 on older GPUs (with a grad scaler).
    """
    if amp == "auto":
        old_gpu = device.type == "cuda" and not torch.cuda.is_bf16_supported()
        return torch.float16 if old_gpu else torch.bfloat16
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def recipe_for(cfg: SeerConfig) -> MultiCropRecipe:
    """The multi-crop recipe the config asks for, overrides applied (the trainer's view)."""
    return resolve_recipe(cfg.augment.recipe, cfg.augment.overrides())


@dataclass
class TrainState:
    """Everything a step reads and writes, and everything a checkpoint must hold."""

    cfg: SeerConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
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
    #: Spare copy of the BatchNorm statistics for skipped steps; built by the first step.
    running_stats: RunningStats | None = None


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
    #: The grad scaler found inf/NaN gradients and skipped the update (the loss was finite);
    #: `skipped` is then True as well.
    overflow: bool = False
    #: The grad scaler's loss scale after the step (None without a scaler: no fp16).
    loss_scale: float | None = None
    #: Effective rank of this rank's embeddings of the first assignment crop (see
    #: `seer_core.swav.effective_rank`): near 1 when the embeddings collapse onto a line, which
    #: the usage entropy cannot see. Measured on the steps the driver prints (every
    #: `train.log_every_steps`); NaN on the others and for a non-finite embedding.
    embedding_rank: float = float("nan")


def build_train_state(
    cfg: SeerConfig,
    device: torch.device | str = "cpu",
    *,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainState:
    """Builds model, optimizer, schedule and queue from a validated config (`wrap`: see the
    module docstring)."""
    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    model = swav_model(cfg)
    if cfg.model.activation_checkpointing:
        enable_activation_checkpointing(model.trunk)
    if cfg.model.sync_bn_group_size:
        model = convert_sync_batchnorm(model, cfg.model.sync_bn_group_size)
    model = model.to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    schedule = make_schedule(cfg)
    set_lr(optimizer, schedule.lr)
    wrapped = wrap(model) if wrap is not None else model
    rank, world = rank_and_world()
    queue = make_queue(cfg, world, device)
    amp_dtype = resolve_amp(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    photometric = (BatchPhotometric(photometric_params(cfg)).to(device)
                   if cfg.augment.photometric_on_device else None)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.train.seed * 1000 + rank)
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


def photometric_params(cfg: SeerConfig) -> PhotometricParams:
    """The papers' colour distortion at `augment.colour_strength` of its size, with the config's
    hue range, grain, blur probability and sigma. One place for both paths (ingest CPU and trainer
    device): the device ramp grows from none to these params, so the cap is where the ramp ends."""
    full = PhotometricParams(p_blur=cfg.augment.blur_probability, hue=cfg.augment.hue,
                             grain=cfg.augment.grain,
                             sigma=(cfg.augment.blur_sigma[0], cfg.augment.blur_sigma[1]))
    return full if cfg.augment.colour_strength >= 1.0 else full.ramped(cfg.augment.colour_strength)


def photometric_strength(cfg: SeerConfig, step: int) -> float:
    """How much of the colour distortion step `step` gets (`augment.photometric_ramp_steps`).

    A function of the step alone, so a resumed run continues the ramp where it stopped. The
    ramp starts at `augment.photometric_ramp_start`: from none, the first steps see views that
    match by their colours alone, the easiest cue there is.
    """
    ramp, start = cfg.augment.photometric_ramp_steps, cfg.augment.photometric_ramp_start
    return 1.0 if ramp <= 0 else start + (1.0 - start) * min(1.0, step / ramp)


def is_log_step(step: int, cfg: SeerConfig) -> bool:
    """Whether the step that ends with `step` completed steps is one the driver prints.

    One rule for the two sides of the step: the trainer measures the costly figures (the
    embedding's rank) only on these steps, and the driver's loop prints exactly these, so a
    printed line never carries a figure that was not measured.
    """
    return step % cfg.train.log_every_steps == 0


def build_optimizer(model: nn.Module, cfg: SeerConfig) -> torch.optim.Optimizer:
    """`optim.name`'s optimizer over `param_groups`, at the scaled base LR.

    LARS is SwAV's and SEER's: each layer moves by ~lr x eta of its norm per step, made for
    batches of thousands and hundreds of thousands of steps. With a laptop's batch of 64 and a
    few thousand steps, that is too slow to leave ln K (issue 8), so short runs use AdamW, whose
    per-weight normalised steps learn within minutes. Both keep biases and norms undecayed.
    """
    groups = param_groups(model, cfg.optim.weight_decay, cfg.optim.exclude_bias_and_norm)
    lr = cfg.scaled_lr()
    if cfg.optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.optim.betas[0], cfg.optim.betas[1]),
                                 weight_decay=cfg.optim.weight_decay)
    return LARS(groups, lr=lr, momentum=cfg.optim.momentum, eta=cfg.optim.eta,
                clip=cfg.optim.clip)


def make_schedule(cfg: SeerConfig) -> Schedule:
    """The LR schedule of a config; fractions in the config are of the scaled base LR."""
    base = cfg.scaled_lr()
    s = cfg.schedule
    kwargs: dict[str, Any] = {"base_lr": base, "warmup_steps": s.warmup_steps,
                              "start_lr": base * s.start_lr}
    if s.name == "plateau_halving":
        # The loss rises while the colour distortion ramps up (the task gets harder): no
        # plateau decision until the ramp is over (`hold_steps`).
        kwargs.update(patience=s.patience, min_delta=s.min_delta, smoothing=s.smoothing,
                      cooldown=s.cooldown, min_lr=base * s.min_lr, factor=s.factor,
                      hold_steps=cfg.augment.photometric_ramp_steps)
    elif s.name == "warmup_cosine":
        kwargs.update(final_lr=base * s.final_lr, cosine_steps=s.cosine_steps)
    return build_schedule(s.name, **kwargs)


def swav_model(cfg: SeerConfig) -> SwAVModel:
    """The bare SwAV model (trunk + head) of a config, on the current default device."""
    m = cfg.model
    return build_swav_model(m.trunk, m.head_hidden, m.head_out, m.head_batchnorm, m.prototypes)


def make_queue(cfg: SeerConfig, world: int, device: torch.device | str) -> SwAVQueue | None:
    """This rank's SwAV queue (its share of `swav.queue_length`), or None without a queue."""
    if not cfg.swav.queue_length:
        return None
    return SwAVQueue(length=cfg.swav.queue_length, dim=cfg.model.head_out,
                     crops_for_assign=tuple(cfg.swav.crops_for_assign),
                     start_step=cfg.swav.queue_start_step, world_size=world, device=device)


def load_optimizer_and_schedule(state: TrainState, saved: Mapping[str, Any]) -> None:
    """Restores the optimizer's and the schedule's progress from a checkpoint, not their knobs.

    The state was built from the config the run resumes with, and that config wins: momentum
    buffers, the schedule's step count, LR level, best loss and counters come from the
    checkpoint; weight decay, momentum, eta, eps, clip and every schedule knob stay the
    config's (what `seer status` shows). Each value that changed is logged once, on rank 0, as
    ``resume: optim.weight_decay 1e-06 -> 1e-05``. A changed parameter grouping
    (`optim.exclude_bias_and_norm`) keeps each parameter's momentum; a changed schedule kind
    keeps only the step count. The caller sets the optimizer's LR from the schedule afterwards.
    """
    changed = [
        (f"optim.{key}", old, new)
        for key, old, new in load_state_keeping_hyperparameters(
            state.optimizer, _regrouped(state, saved)
        )
    ]
    for section in ("optim", "schedule"):
        before = saved["config"][section]
        for key, value in getattr(state.cfg, section).model_dump().items():
            name = f"{section}.{key}"
            if key in before and before[key] != value and all(c[0] != name for c in changed):
                changed.append((name, before[key], value))

    progress = saved["schedule"]
    if progress.get("kind") == state.schedule.kind:
        state.schedule.load_state_dict(dict(progress))
        now = state.schedule.state_dict()
        changed += [(f"schedule state {key}", old, now[key]) for key, old in progress.items()
                    if key in now and now[key] != old]
    else:  # another schedule: its state means nothing here, the step count still does
        state.schedule.steps_done = int(progress["steps_done"])
    if rank_and_world()[0] == 0:
        for name, old, new in changed:
            log.info("resume: %s %s -> %s", name, old, new)


def _regrouped(state: TrainState, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The saved optimizer state, re-indexed for this optimizer's groups if the grouping changed.

    Optimizer state is keyed by position in the concatenated groups; with another
    `optim.exclude_bias_and_norm` the positions differ (and `load_state_dict` refuses a
    different number of groups). The saved grouping is rebuilt from the saved config over the
    same model, so each parameter keeps its own momentum buffer.
    """
    opt = saved["optimizer"]
    sizes = [len(g["params"]) for g in opt["param_groups"]]
    if sizes == [len(g["params"]) for g in state.optimizer.param_groups]:
        return dict(opt)
    exclude = saved["config"]["optim"]["exclude_bias_and_norm"]
    old_groups = param_groups(unwrap(state.model), 0.0, exclude)
    if [len(g["params"]) for g in old_groups] != sizes:
        return dict(opt)  # not a grouping change: let load_state_dict say what is wrong
    saved_index = {
        id(p): i
        for p, i in zip((p for g in old_groups for p in g["params"]),
                        (i for g in opt["param_groups"] for i in g["params"]))
    }
    groups: list[dict[str, Any]] = []
    moved: dict[int, Any] = {}
    position = 0
    for group in state.optimizer.param_groups:
        indices = []
        for p in group["params"]:
            old = saved_index.get(id(p))
            if old in opt["state"]:
                moved[position] = opt["state"][old]
            indices.append(position)
            position += 1
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": indices})
    return {"state": moved, "param_groups": groups}
