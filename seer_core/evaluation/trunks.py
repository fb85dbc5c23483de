"""The trunks the evaluator measures: one restored from a training checkpoint, or a random one.

A checkpoint stores the whole SwAV model's state dict and the config it was trained with; the
trunk is rebuilt from that config (never from what the user thinks the run was), so an
evaluator pointed at the wrong run fails loudly with the keys that do not fit, instead of
scoring random weights. The random trunk is the "--baseline random" floor every curve is read
against.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from seer_core.config import SeerConfig
from seer_core.evaluation.checks import EvalError
from seer_core.models import TRUNK_NAMES, build_trunk
from seer_core.models.export import strip_wrapper_prefixes
from seer_core.training import config_of, swav_model

_SHOWN_KEYS = 5


def _mismatches(model: nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between `model`'s state dict and `state` (first few of each)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected),
                        ("shape mismatch (saved vs built)", shapes)):
        if keys:
            more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
            problems.append(f"{label}: {', '.join(keys[:_SHOWN_KEYS])}{more}")
    return problems


def trunk_from_checkpoint(saved: Mapping[str, Any]) -> tuple[nn.Module, SeerConfig]:
    """(trunk in eval mode with the saved weights, the saved config) of a ``load_state`` dict.

    The SwAV model of the saved config is built on the meta device (no memory, no random init:
    a RegNetY-256GF would otherwise spend a minute initialising weights it then overwrites) and
    the saved tensors are assigned into it; the head must fit too, so a checkpoint of another
    head or prototype count is caught. A state dict that does not fit raises EvalError naming
    the trunk and the first mismatched keys.
    """
    if not isinstance(saved, Mapping) or "model" not in saved or "config" not in saved:
        keys = sorted(saved) if isinstance(saved, Mapping) else type(saved).__name__
        raise EvalError(f"not a seer training checkpoint: needs 'model' and 'config', has {keys}")
    try:
        cfg = config_of(saved)
    except (ValueError, KeyError, TypeError) as exc:
        raise EvalError(f"checkpoint config is invalid: {exc}") from exc
    m = cfg.model  # its trunk is a known one: the config validation checks that
    # Keys as the bare model has them: DDP and torch.compile leave prefixes on every key.
    state = {strip_wrapper_prefixes(key): value for key, value in saved["model"].items()}
    with torch.device("meta"):
        model = swav_model(cfg)
    problems = _mismatches(model, state)
    if problems:
        raise EvalError(f"checkpoint (step {saved.get('step', '?')}) does not fit trunk "
                        f"{m.trunk!r} with its head from the saved config: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True, assign=True)
    trunk = model.trunk
    left = [name for name, t in (*trunk.named_parameters(), *trunk.named_buffers()) if t.is_meta]
    if left:  # pragma: no cover - a torchvision change adding non-persistent buffers
        raise EvalError(f"trunk {m.trunk!r}: tensors not in the checkpoint: {left[:_SHOWN_KEYS]}")
    return trunk.eval(), cfg


def random_trunk(name: str, seed: int = 0) -> nn.Module:
    """Trunk `name` (eval mode, on the CPU) with the standard random initialisation drawn from
    `seed`.

    Drawn inside ``fork_rng`` so the caller's global RNG stream is untouched.
    """
    if name not in TRUNK_NAMES:
        raise EvalError(f"unknown trunk {name!r}; choose one of {', '.join(TRUNK_NAMES)}")
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        return build_trunk(name).eval()
