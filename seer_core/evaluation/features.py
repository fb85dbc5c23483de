"""Frozen features of a trunk at the stages SEER evaluates (res4, res5), and batched extraction.

SEER reports linear probes on the last two stages because the best stage moves with model size
and training length (the res4 probe often wins early in a run). The features are read by running
the trunk's own torchvision sub-modules in order, never by rebuilding a network: a trunk loaded
from any checkpoint, wrapped for activation checkpointing or not, gives the features of exactly
the weights it holds.

What "res4" is per architecture (stride 16, global-average-pooled):

* RegNet (SEER RegNetYs, small RegNetYs, ``tiny``): ``trunk_output.block3``, the third of four
  stages (e.g. 1968 channels for RegNetY-64GF, 4103 for 256GF, 208 for 400MF).
* ResNet: ``layer3`` (256 channels for ResNet-18, 1024 for ResNet-50).
* MobileNetV2: ``features[:14]``, through the 96-channel blocks: ``features[14]`` opens the last
  stride-2 group (160 channels), so this is the stride-16 output, as ``layer3`` is for ResNet.
  (96 channels.)

"res5" is the trunk's final pooled feature: what ``trunk(x)`` returns (``layer4`` /
``block4`` / ``features`` through the 1280-channel 1x1 conv, global-average-pooled).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from seer_core.augment import normalize
from seer_core.evaluation.checks import EvalError
from seer_core.models import eval_mode

EVAL_STAGES: tuple[str, ...] = ("res4", "res5")
# First MobileNetV2 feature block of the last stride-2 group (160 channels); res4 ends before it.
MOBILENET_RES5_START = 14


def trunk_of(model: nn.Module) -> nn.Module:
    """The trunk inside a SwAVModel / DDP / compiled wrapper, or `model` itself."""
    for attr in ("module", "_orig_mod", "trunk"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return trunk_of(inner)
    return model


def _stage_plan(trunk: nn.Module, stage: str) -> list[nn.Module]:
    """The trunk's sub-modules to run in order to get the stage's (unpooled) feature map."""
    if isinstance(trunk, torchvision.models.RegNet):
        stages = list(trunk.trunk_output.children())
        return [trunk.stem, *(stages if stage == "res5" else stages[:-1])]
    if isinstance(trunk, torchvision.models.ResNet):
        layers = [trunk.layer1, trunk.layer2, trunk.layer3]
        if stage == "res5":
            layers.append(trunk.layer4)
        return [trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, *layers]
    if isinstance(trunk, torchvision.models.MobileNetV2):
        blocks = list(trunk.features.children())
        return blocks if stage == "res5" else blocks[:MOBILENET_RES5_START]
    raise EvalError(f"frozen_trunk: {type(trunk).__name__} is not a torchvision RegNet, ResNet or "
                    "MobileNetV2 trunk")


def _last_bn_width(modules: Sequence[nn.Module]) -> int:
    """Channels of the plan's output: every stage here ends in a BatchNorm of that width."""
    widths = [m.num_features for module in modules for m in module.modules()
              if isinstance(m, nn.BatchNorm2d)]
    return widths[-1] if widths else 0


class FrozenTrunk(nn.Module):
    """Normalised float images ``[N,3,H,W]`` -> pooled stage features ``[N,D]``; no gradients,
    BatchNorm always with its running statistics.

    Shares the trunk's modules (no copy: a 1.3B-parameter trunk is 5 GB) and changes nothing on
    it: the forward runs the modules in eval mode under ``no_grad`` and puts each module's
    train/eval flag back. ``out_features`` is D, ``stage`` the stage name.
    """

    def __init__(self, trunk: nn.Module, stage: str) -> None:
        super().__init__()
        self.trunk = trunk
        self.stage = stage
        # A tuple, not a ModuleList: the plan only aliases the trunk's modules, and registering
        # them twice would duplicate every key in ``state_dict``.
        self.plan: tuple[nn.Module, ...] = tuple(_stage_plan(trunk, stage))
        self.out_features = _last_bn_width(self.plan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), eval_mode(self.trunk):
            for module in self.plan:
                x = module(x)
            return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def frozen_trunk(trunk: nn.Module, stage: str = "res5") -> FrozenTrunk:
    """A feature extractor for `stage` ("res4" or "res5") of `trunk`; see the module docstring.

    `trunk` may also be a SwAVModel or a DDP-wrapped one: its trunk is used. Works for every
    trunk in ``seer_core.models.TRUNK_NAMES`` and for plain torchvision classifiers of those
    architectures (their classifier is never run).
    """
    if stage not in EVAL_STAGES:
        raise EvalError(f"unknown stage {stage!r}; choose one of {', '.join(EVAL_STAGES)}")
    return FrozenTrunk(trunk_of(trunk), stage)


def default_device(device: torch.device | str | None) -> torch.device:
    """`device`, or CUDA when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_batch(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images moved to `device`, normalised there, channels-last (what the trunks take)."""
    x = normalize(images.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last)


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """uint8 (0-255) or float (0-1) ``[N,3,H,W]`` with N >= 1."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise EvalError(f"{name} must be a [N, 3, H, W] tensor, got {shape}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise EvalError(f"{name} must be uint8 (or float in [0, 1]), got {images.dtype}")
    if images.shape[0] == 0:
        raise EvalError(f"{name}: no images")


def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Features ``float32 [N,D]`` on the CPU of uint8 images ``[N,3,H,W]``.

    Batches are moved to `device` (default: CUDA if available, else CPU), normalised with the
    ImageNet mean/std there (the images stay uint8 on the host: 4x less memory and transfer) and
    fed channels-last under ``inference_mode`` with every module in eval mode. The model is moved
    to `device` in channels-last format and *left there* (the evaluator extracts train then test
    features with the same model; moving a large trunk back and forth would cost more than the
    extraction); its train/eval flags are restored. ``progress(done, total)`` after each batch.
    Deterministic for a fixed device and batch size.
    """
    check_images(images)
    if batch_size < 1:
        raise EvalError(f"batch_size must be >= 1, got {batch_size}")
    dev = default_device(device)
    model.to(device=dev, memory_format=torch.channels_last)
    total = images.shape[0]
    out: torch.Tensor | None = None
    with torch.inference_mode(), eval_mode(model):
        for start in range(0, total, batch_size):
            feats = model(device_batch(images[start : start + batch_size], dev))
            if feats.dim() != 2:
                feats = torch.flatten(feats, 1)
            if out is None:
                out = torch.empty(total, feats.shape[1], dtype=torch.float32)
            out[start : start + feats.shape[0]] = feats.float().cpu()
            if progress is not None:
                progress(min(start + batch_size, total), total)
    assert out is not None
    return out
