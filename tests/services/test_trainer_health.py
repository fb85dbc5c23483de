"""The trainer's rules between steps: roll back after repeated NaNs, when to call collapse, and
rank 0's checkpoint/stop decisions (world size 1, no Ray needed)."""

from __future__ import annotations

import math

import pytest
import torch

from seer_core.config import load_config
from seer_core.training import StepResult
from services.trainer.decisions import (
    Decider,
    NonFiniteLossError,
    RunMeter,
    check_non_finite,
    collapse_verdict,
    skip_note,
)

K = 512


def result(step: int, loss: float, entropy: float = 0.9, skipped: bool = False) -> StepResult:
    return StepResult(loss=loss, lr=0.1, skipped=skipped, step=step, images_seen=step * 16,
                      usage_entropy=entropy, seconds=0.1, loss_seconds=0.001)


def cfg(*extra: str):
    return load_config("local", [f"model.prototypes={K}", "schedule.warmup_steps=20",
                                 "swav.freeze_prototypes_steps=50", "train.log_every_steps=1",
                                 "train.max_bad_steps=3", *extra])


def test_non_finite_rolls_back_at_the_limit_only() -> None:
    c = cfg()
    check_non_finite(1, 10, c)
    check_non_finite(2, 11, c)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row at step 12"):
        check_non_finite(3, 12, c)


def test_fp16_overflow_skips_are_quiet_until_they_are_bad_steps() -> None:
    """Issue 17 point 8: the grad scaler's own skips are normal at an fp16 start: no error line
    (every rank would send one to the driver) until no loss scale fits the gradients."""
    def overflow(step: int, scale: float) -> StepResult:
        return StepResult(loss=6.0, lr=0.1, skipped=True, step=step, images_seen=step * 16,
                          usage_entropy=0.9, seconds=0.1, loss_seconds=0.001, overflow=True,
                          loss_scale=scale)

    assert skip_note(result(5, 6.0), 0) is None
    assert skip_note(result(5, math.nan, skipped=True), 2) == (
        "non-finite loss at step 5 (2 in a row)")
    assert skip_note(overflow(1, 32768.0), 0) is None
    assert skip_note(overflow(2, 32768.0), 2) is None  # after two NaN losses: still normal
    assert skip_note(overflow(44, 2.0**-25), 1) == (
        "inf/NaN gradients at step 44 with the loss scale down to 2.98023e-08, where no scale "
        "fits them (1 bad steps in a row)")


def test_collapse_judged_only_once_settled_and_on_schedule() -> None:
    c = cfg()
    chance = math.log(K)
    assert collapse_verdict(result(40, chance), c) is None  # prototypes still frozen
    assert collapse_verdict(result(55, chance), c) is None  # not a judging step (every 10)
    assert collapse_verdict(result(60, chance, skipped=True), c) is None
    assert collapse_verdict(result(60, chance), c) is True  # no better than chance
    assert collapse_verdict(result(60, chance - 1.0, entropy=0.01), c) is True  # usage collapsed
    assert collapse_verdict(result(60, chance - 1.0, entropy=0.8), c) is False


def test_decider_checkpoints_every_n_steps_and_stops_at_max_steps() -> None:
    c = cfg("checkpoint.every_steps=5", "checkpoint.every_minutes=0", "train.max_steps=12")
    decider = Decider(c, rank=0, world=1, device=torch.device("cpu"), control=None)
    decisions = {step: decider.decide(step) for step in range(1, 13)}
    assert [s for s, (ckpt, _) in decisions.items() if ckpt] == [5, 10]
    assert [s for s, (_, stop) in decisions.items() if stop] == [12]
    assert decider.stop_reason == "reached train.max_steps=12"


def test_decider_checkpoints_on_time() -> None:
    c = cfg("checkpoint.every_steps=1000", "checkpoint.every_minutes=0.001")
    decider = Decider(c, rank=0, world=1, device=torch.device("cpu"), control=None)
    decider.last_checkpoint -= 1.0  # a second ago: past 0.06 s
    assert decider.decide(7) == (True, False)
    assert decider.decide(8) == (False, False)  # the clock restarted at the checkpoint


def test_decider_counts_max_minutes_from_the_runs_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17 point 13: a worker group started 50 s into a run with a 1-minute budget has
    10 s left, not a minute (the real control actor: tests/integration/test_run_clock.py)."""
    from services.trainer import decisions

    c = cfg("train.max_minutes=1", "checkpoint.every_steps=1000")
    cpu = torch.device("cpu")
    control = object()  # polled for a stop request: no answer, no stop
    monkeypatch.setattr(decisions, "read_run_seconds", lambda _control: 50.0)
    late = Decider(c, rank=0, world=1, device=cpu, control=control)
    assert late.decide(1) == (False, False)
    late.started -= 10.0  # ten seconds later
    assert late.decide(2) == (False, True)
    assert late.stop_reason == "reached train.max_minutes=1.0"
    monkeypatch.setattr(decisions, "read_run_seconds", lambda _control: 0.0)
    fresh = Decider(c, rank=0, world=1, device=cpu, control=control)
    fresh.started -= 10.0
    assert fresh.decide(1) == (False, False)


def test_run_meter_skips_warmup_steps() -> None:
    meter = RunMeter(skip_steps=2)
    meter.add(16, 5.0)  # start-up: not counted
    meter.add(16, 5.0)
    assert meter.summary() == {}
    meter.add(16, 0.01)
    summary = meter.summary()
    assert summary["run_images_per_second"] > 0 and summary["run_data_wait_share"] > 0


def test_run_meter_step_time_p99_shows_a_periodic_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stall every 32 steps barely moves the median but is the 99th percentile."""
    from services.trainer import decisions

    clock = [0.0]
    monkeypatch.setattr(decisions.time, "perf_counter", lambda: clock[0])
    meter = RunMeter(skip_steps=1, window=1000)
    meter.add(64, 0.0)
    for step in range(1, 321):
        clock[0] += 0.3 if step % 32 == 0 else 0.1
        meter.add(64, 0.0)
    summary = meter.summary()
    assert summary["run_step_seconds_p50"] == pytest.approx(0.1)
    assert summary["run_step_seconds_p99"] == pytest.approx(0.3)
    assert len(meter.step_seconds) == 320
    bounded = RunMeter(skip_steps=1, window=5)  # weeks of steps: only the recent window is kept
    for _ in range(10):
        bounded.add(64, 0.0)
    assert len(bounded.step_seconds) == 5


def test_collapse_warning_on_onset_then_at_most_every_repeat() -> None:
    from services.trainer.decisions import WarningThrottle

    now = [0.0]
    throttle = WarningThrottle(repeat_s=600.0, clock=lambda: now[0])
    said = []
    for t, suspected in [(0, False), (10, True), (20, True), (300, True), (610, True),
                         (620, False), (630, True), (640, True)]:
        now[0] = t
        said.append(throttle.should_warn(suspected))
    # Onset at 10, again after 600 s (610), and a new onset after it cleared (630).
    assert said == [False, True, False, False, True, False, True, False]
