"""fp16 steps the grad scaler skips are skips, not updates (issue 17, point 8).

A finite loss whose scaled gradients overflow float16: `GradScaler.step` leaves the weights
alone and `update` halves the scale. The step used to go on as if it had trained: the LR
schedule (warmup, plateau observer) advanced, the bad-step count was reset and the images were
counted. It also must not count as a bad step (`train.max_bad_steps` would roll back every
healthy fp16 start), except once the scale is exhausted.

The overflow is a real one: CPU autocast runs the forward in float16, and the default initial
scale (2**16) overflows the backward of the tiny model at its first step, as it does on GPUs.
The config refuses fp16 on CPU, so the dtype and the scaler are attached by hand, as in
`test_training_skip`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from seer_core.training import TrainState, build_train_state, train_step, unwrap
from tests.seer_core.test_training_skip import (
    _assert_same,
    _free_port,
    float_batch,
    snapshot,
    tiny_config,
)

#: float16's smallest subnormal: below it no loss scale makes the gradients fit (the step's
#: `MIN_LOSS_SCALE`, pinned here as the behaviour asked for).
MIN_LOSS_SCALE = 2.0**-24


def fp16_state(init_scale: float = 2.0**16) -> TrainState:
    state = build_train_state(tiny_config())
    state.amp_dtype = torch.float16
    state.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return state


def test_scaler_skip_is_reported_and_moves_no_schedule_nor_bad_step_count() -> None:
    state = fp16_state()
    cfg = state.cfg
    state.bad_steps = 2  # two non-finite losses just before: an overflow must not clear them
    updates = overflows = 0
    for seed in range(6):
        before = snapshot(state)
        lr_before = state.optimizer.param_groups[0]["lr"]
        scale = state.scaler.get_scale()
        bad_before = state.bad_steps

        result = train_step(state, float_batch(cfg, state, seed))

        assert math.isfinite(result.loss)
        dropped = state.scaler.get_scale() < scale
        if dropped:  # the scaler found inf/NaN gradients and did not step
            overflows += 1
            assert result.skipped, f"step {result.step}: the scale dropped, the step counted"
            assert state.schedule.state_dict() == before["schedule"]
            assert state.bad_steps == bad_before
            assert result.lr == lr_before == state.optimizer.param_groups[0]["lr"]
            _assert_same(before["params"], snapshot(state)["params"], "params")
            _assert_same(before["optimizer"], snapshot(state)["optimizer"], "optimizer")
        else:
            updates += 1
            assert not result.skipped
            assert state.bad_steps == 0
        assert result.overflow == dropped
        assert result.loss_scale == state.scaler.get_scale()
        assert state.schedule.steps_done == updates
        assert result.step == seed + 1  # the batch is consumed either way
    assert overflows >= 1, "the fp16 start at 2**16 no longer overflows: the test proves nothing"
    assert updates >= 1


def test_overflow_counts_as_a_bad_step_only_below_the_scale_floor() -> None:
    """Gradients inf in themselves (a hook injects them): the scaler halves the scale at every
    step for nothing. Above `MIN_LOSS_SCALE` that is the scaler's normal work; below it no scale
    can help, and the bad-step count rises so that `train.max_bad_steps` rolls the run back."""
    state = fp16_state(init_scale=MIN_LOSS_SCALE * 4)
    cfg = state.cfg
    weight = next(unwrap(state.model).trunk.parameters())
    weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    seen = []
    for seed in range(4):
        result = train_step(state, float_batch(cfg, state, seed))
        assert result.skipped and result.overflow and math.isfinite(result.loss)
        seen.append((result.loss_scale, state.bad_steps))
    assert seen == [
        (MIN_LOSS_SCALE * 2, 0),
        (MIN_LOSS_SCALE, 0),
        (MIN_LOSS_SCALE / 2, 1),
        (MIN_LOSS_SCALE / 4, 2),
    ]
    assert state.schedule.steps_done == 0


# --- two ranks: the scaler's verdict is the same everywhere ------------------------------------

def _two_rank_fp16_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        state = build_train_state(tiny_config(), wrap=DistributedDataParallel)
        state.amp_dtype = torch.float16
        state.scaler = torch.amp.GradScaler("cpu")
        seen = []
        for seed in range(4):
            result = train_step(state, float_batch(state.cfg, state, 10 * rank + seed))
            seen.append((result.skipped, result.overflow, result.loss_scale,
                         state.schedule.steps_done, state.bad_steps))
        torch.save({"seen": seen}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_rank_takes_the_scalers_skip_together(tmp_path: Path) -> None:
    """No collective of its own: DDP all-reduced the gradients, so each rank's scaler finds the
    same inf/NaN and every rank skips (or not) at the same step, with the same schedule."""
    world = 2
    mp.spawn(_two_rank_fp16_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world)
    seen = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["seen"] for r in range(world)]
    assert seen[0] == seen[1]
    assert any(overflow for _, overflow, *_ in seen[0]), seen[0]  # the fp16 start overflowed
