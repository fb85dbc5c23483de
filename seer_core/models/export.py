"""Export a trained trunk with torchvision's key names.

What leaves a training run is the trunk alone: the head and prototypes only serve the SwAV loss.
The exported dict loads with ``strict=True`` into the matching torchvision network once its
classifier is dropped (see ``trunks.torchvision_architecture``), whatever wrapped the model
during training: DDP (``module.``), ``torch.compile`` (``_orig_mod.``), activation checkpointing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from seer_core.models.checkpointing import WRAPPED

_LEADING_WRAPPERS = re.compile(r"^(?:module\.|_orig_mod\.)+")
# torch.distributed's own checkpoint_wrapper child name, in case a caller used it.
_INNER_WRAPPERS = frozenset({WRAPPED, "_checkpoint_wrapped_module"})
_CLASSIFIERS = ("fc.", "classifier.")


def strip_wrapper_prefixes(key: str) -> str:
    """A state-dict key without DDP's `module.` and torch.compile's `_orig_mod.` prefixes."""
    return _LEADING_WRAPPERS.sub("", key)


def export_trunk_state_dict(model: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The trunk's tensors (on CPU) under torchvision's names.

    `model` may be a SwAVModel, a bare trunk, either wrapped in DDP / compiled, or a state dict
    of any of those (as stored in a training checkpoint).
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = [p for p in strip_wrapper_prefixes(key).split(".") if p not in _INNER_WRAPPERS]
        cleaned[".".join(parts)] = value
    if any(k.startswith("trunk.") for k in cleaned):
        cleaned = {k[len("trunk.") :]: v for k, v in cleaned.items() if k.startswith("trunk.")}
    return {k: v.detach().cpu() for k, v in cleaned.items() if not k.startswith(_CLASSIFIERS)}
