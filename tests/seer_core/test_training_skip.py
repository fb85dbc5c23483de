"""A step whose loss is non-finite must leave no trace (issue 9, item 1).

One sample that overflows (fp16 does this) turns the whole SwAV loss into NaN. The step is then
skipped on every rank, and nothing it computed may survive it: not in the SwAV queue (else every
following step is NaN until the row ages out, which forces a rollback), not in the BatchNorm
running statistics (the train-mode forward updates them before the loss is known, and a NaN there
never decays: the evaluator's eval-mode features would be NaN for ever), not in the parameters,
the optimizer's momentum, the LR schedule or the grad scaler. The next normal step must train
exactly as if the bad batch had never come.

The NaN travels the real path: float crops in [0, 1] are a legal input of `prepare_inputs`
(`normalize` takes uint8 or float), so a sample whose pixels are NaN reaches the forward the way
an overflowed activation would.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from seer_core.config import SeerConfig, load_config
from seer_core.training import (
    TrainState,
    build_train_state,
    load_state_dict,
    state_dict,
    train_step,
    unwrap,
)
from tests.seer_core.test_training import LARS_RECIPE
from tests.seer_core.test_training import TINY as SHARED_TINY

# The shared tiny model, with a queue from the first step and a longer warmup (a skipped step
# must not move the schedule).
TINY = [
    # SwAV/SEER's own recipe (LARS, colour distortion in ingest), not the `local` preset's
    # short-budget one: these tests pin LARS momentum buffers and plateau decisions.
    *LARS_RECIPE,
    *SHARED_TINY,
    "swav.freeze_prototypes_steps=0",
    "swav.queue_length=16",
    "swav.queue_start_step=0",
    "schedule.warmup_steps=6",
    "train.seed=3",
]


def tiny_config(*extra: str) -> SeerConfig:
    return load_config("local", [*TINY, *extra])


def float_batch(cfg: SeerConfig, state: TrainState, seed: int,
                nan_sample: int | None = None) -> dict[str, torch.Tensor]:
    """Crops as float in [0, 1]; with `nan_sample`, every pixel of that image is NaN."""
    gen = torch.Generator().manual_seed(seed)
    b = cfg.train.batch_size
    batch = {
        key: torch.rand((b, g.count, 3, g.size, g.size), generator=gen)
        for key, g in zip(state.recipe.keys, state.recipe.groups)
    }
    if nan_sample is not None:
        for value in batch.values():
            value[nan_sample] = float("nan")
    return batch


def clone(obj: Any) -> Any:
    """A deep copy of nested dicts/lists of tensors (optimizer and scaler state dicts)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(clone(v) for v in obj)
    return obj


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, (where, a, b)


def snapshot(state: TrainState) -> dict[str, Any]:
    """Everything a skipped step must leave as it was (and that a checkpoint would save)."""
    model = unwrap(state.model)
    prototypes = {id(p) for p in model.head.prototype_parameters()}
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()
                   if id(p) not in prototypes},
        "prototypes": [p.detach().clone() for p in model.head.prototype_parameters()],
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "optimizer": clone(state.optimizer.state_dict()),
        "schedule": dict(state.schedule.state_dict()),
        "queue": clone(state.queue.state_dict()) if state.queue is not None else None,
        "scaler": clone(state.scaler.state_dict()) if state.scaler is not None else None,
    }


def assert_no_trace(before: dict[str, Any], state: TrainState) -> None:
    after = snapshot(state)
    _assert_same(before["params"], after["params"], "params")
    # Re-normalised before the forward, as every step does: a fixed point up to rounding.
    for a, b in zip(before["prototypes"], after["prototypes"]):
        torch.testing.assert_close(a, b)
    _assert_same(before["buffers"], after["buffers"], "batchnorm buffers")
    _assert_same(before["optimizer"], after["optimizer"], "optimizer")
    _assert_same(before["schedule"], after["schedule"], "schedule")
    _assert_same(before["queue"], after["queue"], "queue")
    _assert_same(before["scaler"], after["scaler"], "scaler")


def test_skipped_step_leaves_no_trace() -> None:
    cfg = tiny_config()
    state = build_train_state(cfg)
    for seed in range(2):  # 2 x 8 embeddings fill the queue of 16
        assert not train_step(state, float_batch(cfg, state, seed)).skipped
    assert state.queue is not None and state.queue.in_use
    before = snapshot(state)
    lr_before = state.optimizer.param_groups[0]["lr"]

    result = train_step(state, float_batch(cfg, state, 2, nan_sample=3))

    assert result.skipped and not math.isfinite(result.loss)
    assert state.bad_steps == 1
    assert result.lr == lr_before == state.optimizer.param_groups[0]["lr"]
    assert_no_trace(before, state)
    assert all(torch.isfinite(b).all() for b in unwrap(state.model).buffers())


def test_step_after_a_skip_trains_as_if_the_bad_batch_never_came() -> None:
    cfg = tiny_config()
    state = build_train_state(cfg)
    for seed in range(3):
        train_step(state, float_batch(cfg, state, seed))
    twin = build_train_state(cfg)
    load_state_dict(twin, clone(state_dict(state)))

    assert train_step(state, float_batch(cfg, state, 9, nan_sample=0)).skipped
    got = train_step(state, float_batch(cfg, state, 3))
    expected = train_step(twin, float_batch(cfg, twin, 3))

    assert not got.skipped and state.bad_steps == 0
    assert math.isfinite(got.loss)
    assert got.loss == pytest.approx(expected.loss, rel=1e-5)
    assert got.lr == expected.lr
    assert state.schedule.state_dict() == pytest.approx(twin.schedule.state_dict())
    for (name, a), b in zip(unwrap(state.model).state_dict().items(),
                            unwrap(twin.model).state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert state.queue is not None and twin.queue is not None
    torch.testing.assert_close(state.queue.embeddings, twin.queue.embeddings)
    # The skipped batch is still counted as consumed.
    assert got.step == expected.step + 1


def test_skip_leaves_the_grad_scaler_alone() -> None:
    """fp16 (with its scaler) is refused on CPU by the config: the scaler is attached by hand,
    the step uses whatever scaler the state holds."""
    cfg = tiny_config()
    state = build_train_state(cfg)
    state.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    for seed in range(2):
        train_step(state, float_batch(cfg, state, seed))
    before = snapshot(state)
    assert train_step(state, float_batch(cfg, state, 2, nan_sample=5)).skipped
    assert_no_trace(before, state)


# --- two ranks: a NaN on one rank only ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_rank_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        cfg = tiny_config("swav.queue_length=32")  # 16 per rank: full after two steps
        state = build_train_state(cfg, wrap=DistributedDataParallel)
        for seed in range(2):
            train_step(state, float_batch(cfg, state, 10 * rank + seed))
        before = snapshot(state)
        bad = float_batch(cfg, state, 10 * rank + 2, nan_sample=1 if rank == 1 else None)
        skipped = train_step(state, bad).skipped
        try:
            assert_no_trace(before, state)
            trace = ""
        except AssertionError as exc:
            trace = f"rank {rank}: {exc!r}"
        good = train_step(state, float_batch(cfg, state, 10 * rank + 3))
        torch.save({"skipped": skipped, "trace": trace, "next_loss": good.loss,
                    "next_skipped": good.skipped}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_nan_on_one_rank_is_skipped_everywhere_without_trace(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_two_rank_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    assert [r["skipped"] for r in results] == [True, True]
    # Rank 0's own loss was finite: it must not have pushed its embeddings either.
    assert [r["trace"] for r in results] == ["", ""]
    assert [r["next_skipped"] for r in results] == [False, False]
    assert all(math.isfinite(r["next_loss"]) for r in results)
