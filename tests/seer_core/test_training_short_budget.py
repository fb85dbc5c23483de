"""The knobs that make the `local` preset learn in minutes (issue 8): AdamW, the colour-distortion
ramp, the blur probability, and a plateau schedule that waits for the ramp to end."""

from __future__ import annotations

import pytest
import torch

from seer_core.augment import BatchPhotometric, PhotometricParams
from seer_core.config import ConfigError, load_config
from seer_core.optim import LARS
from seer_core.schedules import PlateauHalving
from seer_core.training import (
    build_train_state,
    load_state_dict,
    make_schedule,
    photometric_params,
    photometric_strength,
    prepare_inputs,
    state_dict,
    train_step,
)
from tests.seer_core.test_training import fixed_batch

SMALL = [
    "model.trunk=tiny",
    "model.head_hidden=[32]",
    "model.head_out=16",
    "model.prototypes=[20]",
    "augment.global_size=32",
    "augment.local_size=16",
    "train.batch_size=8",
    "train.seed=3",
]


def test_the_local_preset_is_the_short_budget_recipe() -> None:
    cfg = load_config("local")
    assert cfg.optim.name == "adamw" and cfg.model.trunk == "small"
    assert cfg.augment.photometric_on_device and cfg.augment.photometric_ramp_steps > 0
    assert cfg.augment.blur_probability == 0.0
    state = build_train_state(load_config("local", SMALL))
    assert isinstance(state.optimizer, torch.optim.AdamW)
    assert state.photometric is not None and state.photometric.params.p_blur == 0.0


def test_adamw_groups_keep_biases_and_norms_undecayed() -> None:
    state = build_train_state(load_config("local", [*SMALL, "optim.weight_decay=0.01",
                                                    "optim.betas=[0.8, 0.99]",
                                                    "optim.momentum=0.5"]))
    groups = state.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert all(p.ndim <= 1 for p in groups[1]["params"])
    # AdamW's own knob (issue 19): `optim.momentum` is LARS's and no longer doubles as beta1.
    assert all(g["betas"] == (0.8, 0.99) for g in groups)
    lars = build_train_state(load_config("local", [*SMALL, "optim.name=lars"]))
    assert isinstance(lars.optimizer, LARS)


def test_optimizer_name_and_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"optim.name.*lars.*adamw"):
        load_config("local", ["optim.name=sgd"])
    for bad in ("[0.9]", "[0.9, 1.0]", "[0.9, 0.999, 0.5]"):
        with pytest.raises(ConfigError, match=r"optim\.betas: .* must be \[beta1, beta2\]"):
            load_config("local", [f"optim.betas={bad}"])
    with pytest.raises(ConfigError, match=r"optim\.betas: -0\.1 is too small; allowed: >= 0"):
        load_config("local", ["optim.betas=[-0.1, 0.9]"])
    with pytest.raises(ConfigError, match=r"optim\.clip"):
        load_config("local", ["optim.name=adamw", "optim.clip=true"])
    with pytest.raises(ConfigError, match=r"photometric_ramp_steps.*photometric_on_device"):
        load_config("local", ["augment.photometric_on_device=false"])
    with pytest.raises(ConfigError, match=r"augment\.blur_probability"):
        load_config("local", ["augment.blur_probability=1.5"])


def test_adamw_state_survives_a_checkpoint_round_trip() -> None:
    cfg = load_config("local", SMALL)
    state = build_train_state(cfg)
    batch = fixed_batch(cfg, state.recipe)
    for _ in range(2):
        train_step(state, batch)
    saved = state_dict(state)
    fresh = build_train_state(cfg)
    load_state_dict(fresh, saved)
    for a, b in zip(state.optimizer.param_groups[0]["params"],
                    fresh.optimizer.param_groups[0]["params"]):
        sa, sb = state.optimizer.state[a], fresh.optimizer.state[b]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert train_step(state, batch).loss == pytest.approx(train_step(fresh, batch).loss)


def test_ramp_strength_follows_the_step() -> None:
    cfg = load_config("local", ["augment.photometric_ramp_steps=100"])
    assert [photometric_strength(cfg, s) for s in (0, 25, 100, 5000)] == [0.0, 0.25, 1.0, 1.0]
    floor = load_config("local", ["augment.photometric_ramp_steps=100",
                                  "augment.photometric_ramp_start=0.5"])
    assert [photometric_strength(floor, s) for s in (0, 50, 100, 5000)] == [0.5, 0.75, 1.0, 1.0]
    off = load_config("local", ["augment.photometric_ramp_steps=0"])
    assert photometric_strength(off, 0) == 1.0


def test_ramped_params_scale_colour_not_blur() -> None:
    full = PhotometricParams()
    half = full.ramped(0.5)
    assert (half.brightness, half.hue, half.p_grayscale) == pytest.approx((0.4, 0.1, 0.1))
    assert (half.p_jitter, half.p_blur, half.sigma) == (full.p_jitter, full.p_blur, full.sigma)
    assert full.ramped(1.0) == full
    with pytest.raises(ValueError, match="strength"):
        full.ramped(1.5)


def test_zero_strength_leaves_colours_alone_and_draws_the_same_stream() -> None:
    photo = BatchPhotometric(PhotometricParams(p_blur=0.0))
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    same = photo(x, generator=torch.Generator().manual_seed(1), strength=0.0)
    assert torch.allclose(same, x, atol=1e-5)
    jittered = photo(x, generator=torch.Generator().manual_seed(1), strength=1.0)
    assert (jittered - x).abs().max() > 0.05
    # The draws do not depend on the strength: after one call, both generators are in step.
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    photo(x, generator=g0, strength=0.3)
    photo(x, generator=g1, strength=0.9)
    assert torch.equal(torch.rand(3, generator=g0), torch.rand(3, generator=g1))


def test_prepare_inputs_ramps_with_the_training_step() -> None:
    cfg = load_config("local", [*SMALL, "augment.photometric_ramp_steps=10"])
    state = build_train_state(cfg)
    batch = fixed_batch(cfg, state.recipe)
    plain = load_config("local", [*SMALL, "augment.photometric_on_device=false",
                                  "augment.photometric_ramp_steps=0"])
    reference = prepare_inputs(build_train_state(plain), batch)
    at_start = prepare_inputs(state, batch)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(at_start, reference))
    state.step = 10
    at_end = prepare_inputs(state, batch)
    assert any((a - b).abs().max() > 0.1 for a, b in zip(at_end, reference))


def test_blur_probability_reaches_both_photometric_paths() -> None:
    cfg = load_config("local", [*SMALL, "augment.blur_probability=0.25"])
    assert photometric_params(cfg).p_blur == 0.25
    assert build_train_state(cfg).photometric.params.p_blur == 0.25  # type: ignore[union-attr]


def test_blur_sigma_reaches_both_photometric_paths_and_is_checked() -> None:
    cfg = load_config("local", [*SMALL, "augment.blur_probability=0.5",
                                "augment.blur_sigma=[0.03, 0.6]"])
    assert photometric_params(cfg).sigma == (0.03, 0.6)
    device = build_train_state(cfg).photometric
    assert device.params.sigma == (0.03, 0.6)  # type: ignore[union-attr]
    assert device.radius == 2  # type: ignore[union-attr]  # ceil(3 x 0.6): a 5-tap kernel
    for bad in ("[0, 1]", "[2, 1]", "[1]"):
        with pytest.raises(ConfigError, match=r"augment\.blur_sigma"):
            load_config("local", [f"augment.blur_sigma={bad}"])


def test_hue_range_reaches_both_photometric_paths_scales_with_strength_and_is_checked() -> None:
    cfg = load_config("local", [*SMALL, "augment.hue=0.5", "augment.colour_strength=0.5"])
    assert photometric_params(cfg).hue == pytest.approx(0.25)
    assert build_train_state(cfg).photometric.params.hue == pytest.approx(0.25)  # type: ignore[union-attr]
    assert photometric_params(load_config("local", SMALL)).hue == 0.2  # SwAV's, by default
    for bad in ("0.6", "-0.1"):
        with pytest.raises(ConfigError, match=r"augment\.hue"):
            load_config("local", [f"augment.hue={bad}"])


def test_grain_reaches_the_device_path_scales_with_strength_and_is_checked() -> None:
    cfg = load_config("local", [*SMALL, "augment.grain=0.1", "augment.colour_strength=0.5"])
    assert photometric_params(cfg).grain == pytest.approx(0.05)
    assert build_train_state(cfg).photometric.params.grain == pytest.approx(0.05)  # type: ignore[union-attr]
    assert photometric_params(load_config("local", SMALL)).grain == 0.0  # none by default
    for bad in ("0.6", "-0.1"):
        with pytest.raises(ConfigError, match=r"augment\.grain"):
            load_config("local", [f"augment.grain={bad}"])
    with pytest.raises(ConfigError, match=r"augment\.grain.*photometric_on_device"):
        load_config("local", ["augment.grain=0.1", "augment.photometric_on_device=false",
                              "augment.photometric_ramp_steps=0"])


def test_colour_strength_caps_both_photometric_paths_and_the_ramp_ends_there() -> None:
    cfg = load_config("local", [*SMALL, "augment.colour_strength=0.5",
                                "augment.photometric_ramp_steps=10"])
    capped = photometric_params(cfg)
    assert (capped.brightness, capped.hue, capped.p_grayscale) == pytest.approx((0.4, 0.1, 0.1))
    assert build_train_state(cfg).photometric.params == capped  # type: ignore[union-attr]
    # The ramp goes from none to the cap: at its end the trainer draws the capped distortion.
    assert photometric_strength(cfg, 10) == 1.0
    with pytest.raises(ConfigError, match=r"augment\.colour_strength"):
        load_config("local", ["augment.colour_strength=0"])


def test_plateau_holds_while_the_task_gets_harder() -> None:
    rising = [4.0 + 0.001 * t for t in range(1000)]
    held = PlateauHalving(base_lr=1.0, warmup_steps=0, patience=50, min_delta=1e-3,
                          hold_steps=400)
    free = PlateauHalving(base_lr=1.0, warmup_steps=0, patience=50, min_delta=1e-3)
    lrs_held = [held.step(loss) for loss in rising]
    lrs_free = [free.step(loss) for loss in rising]
    assert min(lrs_free[:400]) < 1.0  # without the hold, the rising loss cuts the LR early
    assert set(lrs_held[:400]) == {1.0}
    # After the hold and the average's settling time (300 steps), a plateau is a plateau again.
    first_cut = next(t for t, lr in enumerate(lrs_held) if lr < 1.0)
    assert 400 + held.settle_steps + 50 <= first_cut < 1000
    with pytest.raises(ValueError, match="hold_steps"):
        PlateauHalving(base_lr=1.0, warmup_steps=0, patience=5, min_delta=0.0, hold_steps=-1)


def twenty_minute_loss(seed: int) -> list[float]:
    """The shape of a 20-minute `local` run's loss (issue 18's traces): it rises while the
    colour distortion ramps up (1500 steps), goes on rising for 300 steps after (the model lags
    the harder task), then falls by ~0.1 per 1000 steps for the rest of the budget; per-step
    noise as at batch 64."""
    import random

    rng = random.Random(seed)
    rise = [3.4 + 1.0 * t / 1500 for t in range(1500)]
    lag = [4.4 + 0.05 * t / 300 for t in range(300)]
    fall = [4.45 - 1e-4 * t for t in range(2000)]
    return [x + rng.gauss(0.0, 0.05) for x in rise + lag + fall]


def test_the_local_preset_keeps_its_lr_through_a_20_minute_run() -> None:
    """Issue 18: with a patience of 200 steps (one minute) every 20-minute run halved while its
    loss was still falling over minutes, and those runs ended with the smaller gains; the
    preset's patience judges "stopped decreasing" over several minutes. The same curve with
    patience 200 is cut, so this test can tell the two apart."""
    cfg = load_config("local")
    for seed in range(3):
        schedule = make_schedule(cfg)
        lrs = [schedule.step(loss) for loss in twenty_minute_loss(seed)]
        assert set(lrs[cfg.schedule.warmup_steps:]) == {cfg.scaled_lr()}, seed
    short = make_schedule(load_config("local", ["schedule.patience=200"]))
    assert min(short.step(loss) for loss in twenty_minute_loss(0)) < cfg.scaled_lr()
