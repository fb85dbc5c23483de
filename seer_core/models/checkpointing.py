"""Activation checkpointing per trunk stage.

SEER fits RegNetY-256GF on 32 GB GPUs only by recomputing activations in the backward pass.
Each stage (RegNet ``trunk_output.blockN``, ResNet ``layerN``, MobileNetV2 ``features[i]``) is
wrapped in :class:`CheckpointedStage`, which

* checkpoints only while training with grad enabled (eval / ``no_grad`` run plainly: there is
  nothing to save, and checkpoint bookkeeping would only cost time);
* undoes BatchNorm's running-statistics update made by the recomputation: the recomputed
  forward sees the same batch, so without this every checkpointed BN would apply its momentum
  twice per step and its running stats would drift away from the un-checkpointed model's
  (`RunningStats`, the snapshot the training step also restores when it skips a step);
* is invisible in ``state_dict`` keys (hooks drop / re-add the wrapper's child name), so a
  checkpoint taken with activation checkpointing loads into a model without it and vice versa.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

# Child name of the wrapped stage. Also stripped by the exporter should a raw key carry it.
WRAPPED = "checkpointed"


class RunningStats:
    """The running statistics of a module's normalisation layers, with a spare copy of them.

    A train-mode forward updates them (BatchNorm's running_mean/var/num_batches_tracked) as a
    side effect, and two callers must take such an update back: the training step, when the
    loss turns out non-finite (a NaN would stay in them for ever, 0.9 * NaN + 0.1 * x being
    NaN, and every eval-mode feature would be NaN), and a checkpointed stage's recomputation
    (used as a context manager). `save` and `restore` are one multi-tensor copy each, queued on the
    device without a host sync; the spare copy costs as much memory as the statistics (a few
    MB even for RegNetY-256GF).
    """

    def __init__(self, model: nn.Module) -> None:
        self._owners: list[tuple[dict[str, torch.Tensor | None], str]] = []
        self.live: list[torch.Tensor] = []
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    buffer = module._buffers.get(name)
                    if buffer is not None:
                        self._owners.append((module._buffers, name))
                        self.live.append(buffer)
        self.spare = [t.detach().clone() for t in self.live]

    def current(self) -> bool:
        """False once a buffer was replaced (e.g. by `model.to(...)`): build a new one then."""
        return all(owner[name] is t for (owner, name), t in zip(self._owners, self.live))

    def save(self) -> None:
        if self.live:
            torch._foreach_copy_(self.spare, self.live)

    def restore(self) -> None:
        if self.live:
            torch._foreach_copy_(self.live, self.spare)

    # As a context manager: undo, on exit, whatever the enclosed code did to the statistics
    # (snapshot on entry: the recompute context is built at forward time, entered later).
    # A checkpointed stage's recomputation must save exactly the tensors the first forward
    # saved (non-reentrant checkpointing matches them by position), so BN has to run as it
    # did, updates included; restoring the snapshot afterwards makes it count once.
    def __enter__(self) -> RunningStats:
        self.save()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _hide_wrapper_in_state_dict(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
) -> None:
    inner = f"{prefix}{WRAPPED}."
    if not any(k.startswith(inner) for k in state_dict):
        return

    def outer(key: str) -> str:
        return prefix + key[len(inner) :] if key.startswith(inner) else key

    # Rebuilt rather than popped, to keep the key order of the plain model.
    renamed = [(outer(k), v) for k, v in state_dict.items()]
    state_dict.clear()
    state_dict.update(renamed)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        fixed = [(outer(k), v) for k, v in metadata.items() if k != inner[:-1]]
        metadata.clear()
        metadata.update(fixed)


_hide_wrapper_in_state_dict._from_public_api = True  # type: ignore[attr-defined]


def _expect_wrapper_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                            *_: Any) -> None:
    inner = f"{prefix}{WRAPPED}."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)


class CheckpointedStage(nn.Module):
    """Runs the wrapped stage under ``torch.utils.checkpoint`` (non-reentrant) when training."""

    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.add_module(WRAPPED, stage)
        self.register_state_dict_post_hook(_hide_wrapper_in_state_dict)
        self.register_load_state_dict_pre_hook(_expect_wrapper_on_load)

    @property
    def stage(self) -> nn.Module:
        return self._modules[WRAPPED]  # type: ignore[return-value]

    def _contexts(self) -> tuple[contextlib.AbstractContextManager[None], ...]:
        return contextlib.nullcontext(), RunningStats(self.stage)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and torch.is_grad_enabled():
            return checkpoint(self.stage, x, use_reentrant=False, context_fn=self._contexts)
        return self.stage(x)


def _stage_slots(trunk: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every stage of a torchvision trunk."""
    if isinstance(trunk, torchvision.models.RegNet):
        parent = trunk.trunk_output
        return [(parent, name) for name in parent._modules]
    if isinstance(trunk, torchvision.models.ResNet):
        return [(trunk, f"layer{i}") for i in range(1, 5)]
    if isinstance(trunk, torchvision.models.MobileNetV2):
        # Its "stages" are the 19 feature blocks; checkpointing each keeps only block inputs.
        parent = trunk.features
        return [(parent, name) for name in parent._modules]
    raise TypeError(f"activation checkpointing does not know {type(trunk).__name__}")


def enable_activation_checkpointing(trunk: nn.Module) -> None:
    """Wrap every stage of `trunk` (a trunk, or a ``SwAVModel``'s) in a CheckpointedStage.

    Idempotent. Call before wrapping the model in DDP, so DDP sees the final module tree.
    """
    body = getattr(trunk, "trunk", trunk)
    for parent, name in _stage_slots(body):
        stage = parent._modules[name]
        if stage is not None and not isinstance(stage, CheckpointedStage):
            setattr(parent, name, CheckpointedStage(stage))
