"""The checkpoint form of a TrainState: plain tensors and data only, for `weights_only` loads."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from seer_core.config import SeerConfig, config_from_dict
from seer_core.optim import set_lr
from seer_core.training.state import TrainState, load_optimizer_and_schedule, unwrap


def state_dict(state: TrainState, *, per_rank: bool = True) -> dict[str, Any]:
    """Everything needed to continue as if nothing happened; plain data for weights_only.

    ``per_rank=False`` leaves out what each rank owns (its SwAV queue and `rank_state_dict`):
    under Ray Train rank 0's state.pt holds only what the ranks share, and each rank saves its
    own queue and streams beside it (one rank's streams restored on every rank would make them
    all draw the same augmentations).
    """
    saved = {
        "format": 1,
        "step": state.step,
        "images_seen": state.images_seen,
        "model": unwrap(state.model).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "schedule": state.schedule.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "config": state.cfg.to_dict(),
    }
    if per_rank:
        saved["queue"] = state.queue.state_dict() if state.queue is not None else None
        saved.update(rank_state_dict(state))
    return saved


def load_state_dict(state: TrainState, saved: Mapping[str, Any], *,
                    per_rank: bool = True) -> None:
    """Restores a TrainState built from the same config.

    ``per_rank=False`` leaves the queue and the random streams alone (the trainer restores
    those per rank: `load_rank_state_dict`, `seed_rank_streams`)."""
    unwrap(state.model).load_state_dict(saved["model"])
    load_optimizer_and_schedule(state, saved)  # progress from the checkpoint, knobs from cfg
    set_lr(state.optimizer, state.schedule.lr)
    if per_rank and state.queue is not None and saved.get("queue") is not None:
        state.queue.load_state_dict(saved["queue"])
    if state.scaler is not None and saved.get("scaler") is not None:
        state.scaler.load_state_dict(saved["scaler"])
    if per_rank:
        load_rank_state_dict(state, saved)
    state.step = int(saved["step"])
    state.images_seen = int(saved["images_seen"])
    state.bad_steps = 0


def rank_state_dict(state: TrainState) -> dict[str, Any]:
    """This rank's random streams: torch (and CUDA), python, numpy, and the photometric
    generator, as tensors and numbers (for weights_only). Saved by every rank, so that each
    continues its own after a resume."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"generator": state.generator.get_state() if state.generator is not None else None,
            "rng": rng}


def load_rank_state_dict(state: TrainState, saved: Mapping[str, Any]) -> None:
    """Restores what `rank_state_dict` saved (this process's global streams included)."""
    if state.generator is not None and saved.get("generator") is not None:
        state.generator.set_state(saved["generator"])
    rng = saved.get("rng")
    if rng is None:
        return
    torch.set_rng_state(rng["torch"])
    py, npy = rng["python"], rng["numpy"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def seed_rank_streams(state: TrainState, rank: int, step: int) -> None:
    """Fresh random streams for a rank that has none saved (a rank added by a resume with more
    workers, or whose saved streams do not load here).

    Seeded from (train.seed, rank, step) through numpy's SeedSequence, so each rank's streams
    differ from every other rank's and from the ones the run started with at that rank, and a
    second resume at another step does not replay the first one's draws.
    """
    seeds = np.random.SeedSequence([state.cfg.train.seed, rank, step]).generate_state(
        4, dtype=np.uint64)
    torch.manual_seed(int(seeds[0]))  # every device's generator too
    random.seed(int(seeds[1]))
    np.random.seed(int(seeds[2]) % 2**32)
    if state.generator is not None:
        state.generator.manual_seed(int(seeds[3]))


def config_of(saved: Mapping[str, Any]) -> SeerConfig:
    """The validated config a checkpoint was written with."""
    return config_from_dict(saved["config"])
