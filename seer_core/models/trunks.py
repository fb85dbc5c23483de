"""Trunks by name: images ``[N,3,H,W]`` -> pooled features ``[N,D]``.

Every trunk *is* the torchvision module of its architecture with the classifier replaced by
``nn.Identity``. Keeping torchvision's own module tree (rather than re-implementing the nets)
means a trunk's state dict already has torchvision's key names, so an exported SEER trunk loads
straight into ``torchvision.models.regnet_y_*`` / ``resnet*`` / ``mobilenet_v2`` for evaluation
or fine-tuning elsewhere.

Nothing here ever downloads weights: every builder passes ``weights=None`` or builds the
torchvision class directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torchvision
from torch import nn
from torchvision.models.regnet import BlockParams, RegNet


@dataclass(frozen=True)
class RegNetSpec:
    """The RegNet design-space parameters of one model (Radosavovic et al., 2020)."""

    depth: int
    w_0: int
    w_a: float
    w_m: float
    group_width: int
    se_ratio: float = 0.25


# The six SEER RegNetYs. Sources (checked, not copied):
#  - 8/16/32/64/128GF: ClassyVision `classy_vision/models/regnet.py` (`regnet_y_{8,16,32,64,128}gf`,
#    which VISSL's SEER configs reference), identical to timm's `regnety_{080,160,320,640,1280}`;
#    8/16/32/128GF are also torchvision's own `regnet_y_*` parameters.
#  - 256GF: the SEER configuration, VISSL `configs/config/pretrain/swav/models/regnet256Gf_1.yaml`
#    and VISSL's docs ("RegNet-256Gf model (1.3B params)"): depth 27, w_0 640, w_a 230.83,
#    w_m 2.53, group width 373 -> final width 10444. (ClassyVision's own `regnet_y_256gf`, with
#    w_a 124.47 / w_m 2.04 / group width 848 -> 5088, is *not* the SEER model.)
#  - Final widths cross-checked with VISSL's linear-eval configs (`regnet64Gf_3.yaml`: res4 1968,
#    res5 4920; `regnet256Gf_1.yaml`: res4 4103, res5 10444). ClassyVision's comment "2976" on
#    regnet_y_64gf contradicts both its own width rule and VISSL's eval config; 4920 is right.
#  - SE ratio 0.25 for all (RegNetY).
SEER_REGNETS: dict[str, RegNetSpec] = {
    "regnety_8gf": RegNetSpec(depth=17, w_0=192, w_a=76.82, w_m=2.19, group_width=56),
    "regnety_16gf": RegNetSpec(depth=18, w_0=200, w_a=106.23, w_m=2.48, group_width=112),
    "regnety_32gf": RegNetSpec(depth=20, w_0=232, w_a=115.89, w_m=2.53, group_width=232),
    "regnety_64gf": RegNetSpec(depth=20, w_0=352, w_a=147.48, w_m=2.4, group_width=328),
    "regnety_128gf": RegNetSpec(depth=27, w_0=456, w_a=160.83, w_m=2.52, group_width=264),
    "regnety_256gf": RegNetSpec(depth=27, w_0=640, w_a=230.83, w_m=2.53, group_width=373),
}

# torchvision's own parameters for its regnet_y_400mf / regnet_y_800mf builders. They are restated
# here because torchvision's builders compute the block widths with tensors on the *current
# default device*, which fails under `with torch.device("meta")`; the export test proves the
# result is key-for-key torchvision's model.
SMALL_REGNETS: dict[str, RegNetSpec] = {
    "regnety_400mf": RegNetSpec(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8),
    "regnety_800mf": RegNetSpec(depth=14, w_0=56, w_a=38.84, w_m=2.4, group_width=16),
}


@dataclass(frozen=True)
class HandSizedSpec:
    """A RegNetY given stage by stage: the w_0/w_a/w_m rule cannot make stages this narrow
    (w_0 % 8 == 0 and quantisation to multiples of 8 collapse them)."""

    stem: int
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    group_width: int


HAND_SIZED: dict[str, HandSizedSpec] = {
    # `tiny`: four one-block stages, ~22k parameters, a few ms per step on CPU at 32-96 px.
    "tiny": HandSizedSpec(stem=8, depths=(1, 1, 1, 1), widths=(8, 16, 32, 64), group_width=8),
    # `small`: the `local` preset's trunk (~330k parameters), ~230 img/s on one CPU thread at
    # 64/32-px crops (benchmarks/train_step.py), about 12x fewer FLOPs than regnety_400mf.
    # `tiny` (64-d features) trains 3x faster but learned nothing shape-selective in the quality
    # benchmark's budget; regnety_400mf (56 img/s) sees too few images in 20 minutes.
    "small": HandSizedSpec(stem=16, depths=(1, 1, 2, 1), widths=(32, 64, 128, 256),
                           group_width=16),
}


def regnet_block_params(name: str) -> BlockParams:
    """Per-stage parameters of the RegNet trunk `name`.

    Computed on the CPU whatever the ambient default device is: the width rule calls
    ``.tolist()``, impossible on meta tensors, and these are a handful of scalars anyway.
    """
    if name in HAND_SIZED:
        hand, n = HAND_SIZED[name], len(HAND_SIZED[name].widths)
        return BlockParams(depths=list(hand.depths), widths=list(hand.widths),
                           group_widths=[hand.group_width] * n, bottleneck_multipliers=[1.0] * n,
                           strides=[2] * n, se_ratio=0.25)
    spec = SEER_REGNETS.get(name) or SMALL_REGNETS.get(name)
    if spec is None:
        raise ValueError(f"{name!r} is not a RegNet trunk")
    with torch.device("cpu"):
        return BlockParams.from_init_params(**dataclasses.asdict(spec))


def _regnet(name: str) -> nn.Module:
    stem = HAND_SIZED[name].stem if name in HAND_SIZED else 32
    # Same BatchNorm settings torchvision's `_regnet` passes (and pycls / VISSL use).
    norm = partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1)
    return RegNet(regnet_block_params(name), stem_width=stem, norm_layer=norm)


_CLASSIFIER_MODELS: dict[str, Callable[[], nn.Module]] = {
    **{name: partial(_regnet, name) for name in (*SEER_REGNETS, *SMALL_REGNETS)},
    "resnet18": partial(torchvision.models.resnet18, weights=None),
    "resnet50": partial(torchvision.models.resnet50, weights=None),
    "mobilenet_v2": partial(torchvision.models.mobilenet_v2, weights=None),
    **{name: partial(_regnet, name) for name in HAND_SIZED},
}
TRUNK_NAMES: tuple[str, ...] = tuple(_CLASSIFIER_MODELS)


def torchvision_architecture(name: str) -> nn.Module:
    """The plain torchvision classifier network (random init) that trunk `name` is cut from.

    This is what an exported trunk state dict loads into (after its ``fc`` / ``classifier`` is
    dropped), so evaluators and tests can rebuild the reference model without this package's
    wrappers.
    """
    try:
        builder = _CLASSIFIER_MODELS[name]
    except KeyError:
        names = ", ".join(TRUNK_NAMES)
        raise ValueError(f"unknown trunk {name!r}; choose one of {names}") from None
    return builder()


def build_trunk(name: str) -> nn.Module:
    """Build trunk `name` on the current default device; ``.out_features`` is its width D.

    The classifier is replaced by ``nn.Identity`` (not deleted) so that torchvision's
    ``forward`` still runs unchanged and ends with the pooled, flattened features. Works under
    ``with torch.device("meta")`` for sizing the 1.3B-parameter models without memory.
    """
    model = torchvision_architecture(name)
    if isinstance(model, torchvision.models.MobileNetV2):
        width, classifier = int(model.last_channel), "classifier"
    else:
        width, classifier = int(model.fc.in_features), "fc"
    setattr(model, classifier, nn.Identity())
    model.out_features = width
    model.trunk_name = name
    return model
