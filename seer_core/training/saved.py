"""The checkpoint form of a TrainState: plain tensors and data only, for `weights_only` loads."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from seer_core.config import SeerConfig, config_from_dict
from seer_core.optim import set_lr
from seer_core.training.state import TrainState, unwrap


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
