"""On resume the config wins over the checkpoint for every hyperparameter (issue 9, item 5).

`optimizer.load_state_dict` brings back each param group as it was saved: weight decay,
momentum, LARS eta, clip... So a run resumed with a new `optim.weight_decay` kept training with
the old one while `seer status` and the config showed the new one. A checkpoint must bring back
progress (momentum buffers, step counts, the schedule's current LR level, best loss, counters),
never knobs; and every knob that changed is logged, one line each.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import torch

from seer_core.config import SeerConfig, load_config
from seer_core.training import (
    build_train_state,
    load_state_dict,
    state_dict,
    train_step,
)
from tests.seer_core.test_training import LARS_RECIPE, fixed_batch
from tests.seer_core.test_training_skip import clone

TINY = [
    # SwAV/SEER's own recipe (LARS, colour distortion in ingest), not the `local` preset's
    # short-budget one: these tests pin LARS momentum buffers and plateau decisions.
    *LARS_RECIPE,
    "model.trunk=tiny",
    "model.head_hidden=[32]",
    "model.head_out=16",
    "model.prototypes=32",
    "augment.global_size=32",
    "augment.local_size=16",
    "train.batch_size=4",
    "swav.freeze_prototypes_steps=0",
    "train.amp=off",
    "train.seed=1",
]


def tiny_config(*extra: str) -> SeerConfig:
    return load_config("local", [*TINY, *extra])


def trained_checkpoint(*overrides: str, steps: int = 2) -> dict[str, Any]:
    state = build_train_state(tiny_config(*overrides))
    for seed in range(steps):
        train_step(state, fixed_batch(state.cfg, state.recipe, seed))
    return clone(state_dict(state))


def resume_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("resume:")]


OLD_OPTIM = ["optim.weight_decay=0.000001", "optim.momentum=0.9", "optim.eta=0.001",
             "optim.clip=false"]
NEW_OPTIM = ["optim.weight_decay=0.00001", "optim.momentum=0.8", "optim.eta=0.002",
             "optim.clip=true"]


def test_resume_uses_the_configs_optimizer_hyperparameters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = trained_checkpoint(*OLD_OPTIM)
    state = build_train_state(tiny_config(*NEW_OPTIM))
    with caplog.at_level(logging.INFO, logger="seer.training"):
        load_state_dict(state, saved)

    groups = {g["name"]: g for g in state.optimizer.param_groups}
    assert groups["lars"]["weight_decay"] == 1e-5
    assert groups["excluded"]["weight_decay"] == 0.0  # biases and norms: never decayed
    for group in groups.values():
        assert group["momentum"] == 0.8
        assert group["eta"] == 0.002
        assert group["clip"] is True
        assert group["lr"] == state.schedule.lr
    # Progress is kept: the momentum buffers are the saved ones.
    saved_buffers = [s["momentum_buffer"] for s in saved["optimizer"]["state"].values()]
    buffers = [state.optimizer.state[p]["momentum_buffer"]
               for g in state.optimizer.param_groups for p in g["params"]]
    assert len(buffers) == len(saved_buffers) > 0
    for a, b in zip(saved_buffers, buffers):
        assert torch.equal(a, b)

    lines = resume_lines(caplog)
    assert "resume: optim.weight_decay 1e-06 -> 1e-05" in lines
    assert "resume: optim.momentum 0.9 -> 0.8" in lines
    assert "resume: optim.eta 0.001 -> 0.002" in lines
    assert "resume: optim.clip False -> True" in lines
    assert len(lines) == 4, lines  # one line per changed key, nothing about unchanged ones


def test_resume_with_the_same_config_changes_and_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = trained_checkpoint(*OLD_OPTIM)
    state = build_train_state(tiny_config(*OLD_OPTIM))
    with caplog.at_level(logging.INFO, logger="seer.training"):
        load_state_dict(state, saved)
    assert resume_lines(caplog) == []
    got = [{k: v for k, v in g.items() if k != "params"} for g in state.optimizer.param_groups]
    want = [{k: v for k, v in g.items() if k != "params"}
            for g in saved["optimizer"]["param_groups"]]
    assert got == want


PLATEAU = ["schedule.name=plateau_halving", "schedule.warmup_steps=0", "schedule.patience=2",
           "schedule.cooldown=3", "schedule.factor=0.5", "schedule.smoothing=0.5",
           "schedule.min_delta=0.0", "schedule.min_lr=0.0"]


def plateau_checkpoint(*overrides: str) -> dict[str, Any]:
    """A checkpoint whose plateau schedule has halved once and is cooling down."""
    state = build_train_state(tiny_config(*PLATEAU, *overrides))
    for _ in range(3):  # flat loss: no improvement after the first, halving after 2 more
        state.schedule.step(5.0)
    assert state.schedule.reductions == 1 and state.schedule.cooldown_left == 3
    return clone(state_dict(state))


def test_resume_keeps_schedule_progress_but_the_configs_knobs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = plateau_checkpoint()
    state = build_train_state(tiny_config(*PLATEAU, "schedule.patience=7", "schedule.cooldown=1",
                                          "schedule.factor=0.25", "schedule.smoothing=0.9"))
    with caplog.at_level(logging.INFO, logger="seer.training"):
        load_state_dict(state, saved)
    s = state.schedule
    assert (s.patience, s.cooldown, s.factor, s.smoothing) == (7, 1, 0.25, 0.9)
    progress = saved["schedule"]
    assert s.steps_done == progress["steps_done"] == 3
    assert s.reductions == 1 and s.best == progress["best"] and s.ema == progress["ema"]
    assert s.level == progress["level"] == pytest.approx(s.base_lr / 2)
    assert s.cooldown_left == 1  # what is left of a cooldown never exceeds the new cooldown
    lines = resume_lines(caplog)
    for line in ("resume: schedule.patience 2 -> 7", "resume: schedule.cooldown 3 -> 1",
                 "resume: schedule.factor 0.5 -> 0.25", "resume: schedule.smoothing 0.5 -> 0.9"):
        assert line in lines


def test_resume_with_a_new_base_lr_rescales_the_plateau_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = plateau_checkpoint("optim.lr=0.6")
    state = build_train_state(tiny_config(*PLATEAU, "optim.lr=0.3"))
    with caplog.at_level(logging.INFO, logger="seer.training"):
        load_state_dict(state, saved)
    # Halved once from the old base: halved once from the new one.
    assert state.schedule.lr == pytest.approx(state.schedule.base_lr / 2)
    assert saved["schedule"]["level"] == pytest.approx(2 * state.schedule.lr)
    assert all(g["lr"] == state.schedule.lr for g in state.optimizer.param_groups)
    assert any(line.startswith("resume: optim.lr 0.6 -> 0.3") for line in resume_lines(caplog))


def test_resume_with_a_higher_min_lr_lifts_the_plateau_level() -> None:
    saved = plateau_checkpoint()
    state = build_train_state(tiny_config(*PLATEAU, "schedule.min_lr=0.8"))
    load_state_dict(state, saved)
    assert state.schedule.lr == pytest.approx(0.8 * state.schedule.base_lr)


def test_resume_with_another_schedule_keeps_the_step_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = plateau_checkpoint()
    state = build_train_state(tiny_config("schedule.name=warmup_cosine", "schedule.warmup_steps=2",
                                          "schedule.cosine_steps=10"))
    with caplog.at_level(logging.INFO, logger="seer.training"):
        load_state_dict(state, saved)
    assert state.schedule.steps_done == 3
    base = state.schedule.base_lr
    assert state.schedule.lr == pytest.approx(0.5 * base * (1 + math.cos(math.pi * 1 / 10)))
    assert "resume: schedule.name plateau_halving -> warmup_cosine" in resume_lines(caplog)


def test_next_step_after_resume_trains_with_the_new_weight_decay() -> None:
    """The values in the groups are the ones the update uses: a resumed step equals the step of
    a run that had the new weight decay from the start, given the same momentum buffers."""
    saved = trained_checkpoint("optim.weight_decay=0.0")
    resumed = build_train_state(tiny_config("optim.weight_decay=0.5"))
    load_state_dict(resumed, clone(saved))  # the optimizer adopts the saved buffers: no sharing
    reference = build_train_state(tiny_config("optim.weight_decay=0.5"))
    load_state_dict(reference, clone(saved))
    for group in reference.optimizer.param_groups:  # what the group must be, by hand
        group["weight_decay"] = 0.5 if group["name"] == "lars" else 0.0
    batch = fixed_batch(resumed.cfg, resumed.recipe, 7)
    train_step(resumed, batch)
    train_step(reference, batch)
    for a, b in zip(resumed.model.parameters(), reference.model.parameters()):
        assert torch.equal(a, b)


def test_resume_with_another_parameter_grouping_keeps_each_momentum_buffer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = trained_checkpoint("optim.exclude_bias_and_norm=true")
    before = build_train_state(tiny_config("optim.exclude_bias_and_norm=true"))
    load_state_dict(before, clone(saved))
    buffer_of = {name: before.optimizer.state[p]["momentum_buffer"]
                 for name, p in before.model.named_parameters()}

    state = build_train_state(tiny_config("optim.exclude_bias_and_norm=false"))
    with caplog.at_level(logging.INFO, logger="seer.training"):
        load_state_dict(state, clone(saved))
    assert [g["name"] for g in state.optimizer.param_groups] == ["lars"]
    for name, p in state.model.named_parameters():
        assert torch.equal(state.optimizer.state[p]["momentum_buffer"], buffer_of[name]), name
    assert "resume: optim.exclude_bias_and_norm True -> False" in resume_lines(caplog)
