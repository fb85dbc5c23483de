"""Tests for seer_core.schedules: warmup+cosine values, plateau halving on synthetic curves."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from seer_core.schedules import (
    Constant,
    PlateauHalving,
    WarmupCosine,
    build_schedule,
)


def _lrs(schedule, losses) -> list[float]:  # type: ignore[no-untyped-def]
    """LR used by each step when the trainer feeds ``losses`` one by one."""
    used = []
    for loss in losses:
        used.append(schedule.lr)
        schedule.step(loss)
    return used


def falling_then_flat(n_fall: int, n_flat: int, seed: int, noise: float = 0.02) -> list[float]:
    """A loss that falls linearly from 6 to 1, then stays at 1 with noise (the plateau)."""
    rng = random.Random(seed)
    fall = [6.0 - 5.0 * t / n_fall + rng.gauss(0.0, noise) for t in range(n_fall)]
    return fall + [1.0 + rng.gauss(0.0, noise) for _ in range(n_flat)]


def test_warmup_cosine_key_steps() -> None:
    s = WarmupCosine(base_lr=1.0, final_lr=0.1, warmup_steps=10, cosine_steps=100, start_lr=0.2)
    assert s.lr == pytest.approx(0.2)
    lrs = [s.lr] + [s.step() for _ in range(300)]
    assert lrs[5] == pytest.approx(0.6)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[10 + 50] == pytest.approx(0.55)
    assert lrs[10 + 25] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lrs[110] == pytest.approx(0.1)
    assert lrs[300] == pytest.approx(0.1)  # never needs a total: stays at final_lr
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # monotone after warmup
    no_warmup = WarmupCosine(base_lr=1.0, final_lr=0.0, warmup_steps=0, cosine_steps=4)
    assert [no_warmup.lr] + [no_warmup.step() for _ in range(5)] == pytest.approx(
        [1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4), 0, 0]
    )


def test_constant_with_warmup_and_state() -> None:
    s = Constant(base_lr=0.4, warmup_steps=4)
    assert _lrs(s, [None] * 6) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    restored = Constant(base_lr=0.4, warmup_steps=4)
    restored.load_state_dict(s.state_dict())
    assert restored.steps_done == 6 and restored.lr == 0.4
    with pytest.raises(ValueError, match="constant"):
        WarmupCosine(1.0, 0.0, 1, 1).load_state_dict(s.state_dict())


def test_plateau_halves_after_the_plateau_and_never_before() -> None:
    n_fall, patience = 1500, 150
    s = PlateauHalving(base_lr=0.8, warmup_steps=100, patience=patience, min_delta=1e-3)
    lrs = _lrs(s, falling_then_flat(n_fall, 1000, seed=0))
    assert lrs[100 : n_fall + patience] == [0.8] * (n_fall + patience - 100)
    first_cut = next(t for t in range(100, len(lrs)) if lrs[t] < 0.8)
    # The average (time constant 1/(1-smoothing) = 100 steps) starts ~0.3 above the plateau and
    # keeps "improving" by more than min_delta until it is within ~1e-3 of it, ln(300) ~ 6 time
    # constants; then patience runs out.
    assert n_fall + patience < first_cut < n_fall + patience + 700
    assert lrs[first_cut] == pytest.approx(0.4)
    assert s.reductions >= 2  # the loss stays flat, so the LR keeps being halved
    assert all(b in (a, a / 2) for a, b in itertools.pairwise(lrs[100:]))


def ramp_then_falling(ramp: int, flat: int, seed: int) -> list[float]:
    """A loss that rises while an augmentation ramps up (3.5 -> 4.4 over ``ramp`` steps), stays
    there for ``flat`` steps, then falls slowly as the model learns the harder task."""
    rng = random.Random(seed)
    rise = [3.5 + 0.9 * t / ramp for t in range(ramp)]
    after = [4.4 - 4e-4 * max(0, t - flat) for t in range(2000)]
    return [x + rng.gauss(0.0, 0.02) for x in rise + after]


def test_plateau_after_a_hold_waits_for_the_average_to_catch_up() -> None:
    """The `local` preset's case: no decision during the colour ramp (hold), and none on the
    average's lag behind the risen loss just after it: the loss falls once the ramp is over,
    so the LR must stay. Without the settling time the LR was halved at hold + patience."""
    kwargs = dict(base_lr=2e-3, warmup_steps=20, patience=200, min_delta=5e-3, cooldown=100,
                  hold_steps=1500)
    for seed in range(3):
        lrs = _lrs(PlateauHalving(**kwargs), ramp_then_falling(1500, 150, seed))
        cuts = [t for t in range(20, len(lrs)) if lrs[t] < 2e-3]
        assert not cuts, (seed, cuts[0])
    settle = PlateauHalving(**kwargs).settle_steps
    assert settle == 300  # 3 time constants of the 0.99 average
    # A real plateau after the hold is still cut, once the average has caught up.
    flat = [4.4 + random.Random(t).gauss(0.0, 0.02) for t in range(1000)]
    lrs = _lrs(PlateauHalving(**kwargs), [3.5] * 1500 + flat)
    first_cut = next(t for t in range(20, len(lrs)) if lrs[t] < 2e-3)
    assert 1500 + settle + 200 <= first_cut < 1500 + settle + 400


def test_plateau_keeps_lr_while_the_loss_falls() -> None:
    s = PlateauHalving(base_lr=0.5, warmup_steps=10, patience=50, min_delta=1e-3)
    losses = [5.0 * math.exp(-t / 3000) + random.Random(t).gauss(0, 0.02) for t in range(2000)]
    assert set(_lrs(s, losses)[10:]) == {0.5}
    assert s.reductions == 0


def test_plateau_warmup_is_honoured_and_decides_nothing() -> None:
    s = PlateauHalving(base_lr=1.0, warmup_steps=300, patience=20, min_delta=1e-3, start_lr=0.1)
    lrs = _lrs(s, [2.0] * 330)  # flat from the start
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[150] == pytest.approx(0.55)
    assert lrs[300] == pytest.approx(1.0)
    assert s.reductions == 1
    # First post-warmup loss sets the best, then 20 steps without improvement.
    assert next(t for t in range(300, 330) if lrs[t] < 1.0) == 300 + 21


def test_plateau_cooldown_and_min_lr() -> None:
    patience, cooldown = 10, 25
    s = PlateauHalving(
        base_lr=1.0, warmup_steps=0, patience=patience, min_delta=0.0, cooldown=cooldown,
        min_lr=0.2, smoothing=0.0,
    )
    lrs = _lrs(s, [1.0] * 400)
    cuts = [t for t in range(1, len(lrs)) if lrs[t] < lrs[t - 1]]
    assert len(cuts) == 3  # 1 -> 0.5 -> 0.25 -> 0.2 (floor)
    assert [lrs[t] for t in cuts] == pytest.approx([0.5, 0.25, 0.2])
    assert all(b - a == cooldown + patience for a, b in itertools.pairwise(cuts))
    assert min(lrs) == 0.2 and s.reductions == 3


def test_plateau_is_deterministic_ignores_non_finite_and_round_trips() -> None:
    kwargs = dict(
        base_lr=0.8, warmup_steps=20, patience=40, min_delta=1e-3, cooldown=10, smoothing=0.9
    )
    losses = falling_then_flat(300, 400, seed=1)
    a, b = PlateauHalving(**kwargs), PlateauHalving(**kwargs)
    assert _lrs(a, losses) == _lrs(b, losses)  # every rank decides the same

    s = PlateauHalving(**kwargs)
    _lrs(s, losses[:350])
    before = s.state_dict()
    for bad in (float("nan"), float("inf"), None):
        s.step(bad)
    after = s.state_dict()
    assert after["steps_done"] == before["steps_done"] + 3
    assert {k: v for k, v in after.items() if k != "steps_done"} == {
        k: v for k, v in before.items() if k != "steps_done"
    }

    resumed = PlateauHalving(**kwargs)
    resumed.load_state_dict(s.state_dict())
    assert _lrs(resumed, losses[350:]) == _lrs(s, losses[350:])
    assert s.reductions >= 1
    with pytest.raises(ValueError, match="plateau_halving"):
        Constant(1.0).load_state_dict(s.state_dict())


def test_plateau_smoothed_loss_is_bias_corrected() -> None:
    s = PlateauHalving(base_lr=1.0, warmup_steps=0, patience=5, min_delta=0.0, smoothing=0.9)
    assert s.smoothed_loss is None
    s.step(4.0)
    assert s.smoothed_loss == pytest.approx(4.0)
    s.step(2.0)
    assert s.smoothed_loss == pytest.approx((0.09 * 4.0 + 0.1 * 2.0) / (1 - 0.81))


def test_build_schedule() -> None:
    assert isinstance(build_schedule("constant", base_lr=0.1), Constant)
    cos = build_schedule("warmup_cosine", base_lr=1, final_lr=0, warmup_steps=1, cosine_steps=2)
    assert isinstance(cos, WarmupCosine)
    plateau = build_schedule(
        "plateau_halving", base_lr=1.0, warmup_steps=0, patience=3, min_delta=0.01
    )
    assert isinstance(plateau, PlateauHalving)
    with pytest.raises(ValueError, match="constant, plateau_halving, warmup_cosine"):
        build_schedule("step")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"base_lr": -1.0}, "base_lr"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"patience": 0}, "patience"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"factor": 1.0}, "factor"),
        ({"min_lr": 2.0}, "min_lr"),
        ({"cooldown": -1}, "cooldown"),
    ],
)
def test_plateau_validates(kwargs: dict, name: str) -> None:
    args = {"base_lr": 1.0, "warmup_steps": 0, "patience": 5, "min_delta": 0.0, **kwargs}
    with pytest.raises(ValueError, match=name):
        PlateauHalving(**args)


def test_plateau_resumes_its_count_of_flat_steps() -> None:
    """Steps without improvement are saved as `flat_steps` (the trainer's `bad_steps` count
    non-finite losses, another thing), and a resumed run keeps counting from there."""
    s = PlateauHalving(base_lr=1.0, warmup_steps=0, patience=10, min_delta=0.0, smoothing=0.0)
    for _ in range(5):
        s.step(1.0)
    state = s.state_dict()
    assert state["flat_steps"] == 4 and "bad_steps" not in state
    resumed = PlateauHalving(base_lr=1.0, warmup_steps=0, patience=10, min_delta=0.0,
                             smoothing=0.0)
    resumed.load_state_dict(state)
    assert resumed.flat_steps == 4
    assert _lrs(resumed, [1.0] * 8) == _lrs(s, [1.0] * 8)
