"""Short end-to-end fine-tuning of a copy of a trunk with a linear head.

The frozen-feature protocols measure what the features already separate; fine-tuning measures
how good a starting point the weights are, which is how SEER models are used downstream. It is
kept short (a few hundred steps) because the evaluator runs it periodically next to training,
and it always works on a deep copy: the trunk passed in may be shared with the frozen protocols
or still be referenced by the caller.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from seer_core.evaluation.checks import EvalError, check_labels, topk_correct
from seer_core.evaluation.features import (
    check_images,
    default_device,
    device_batch,
    extract_features,
    trunk_of,
)
from seer_core.models import eval_mode

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
# VISSL / MoCo initialise evaluation heads with N(0, 0.01) weights and zero bias.
HEAD_INIT_STD = 0.01


def _check_split(images: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    check_images(images, f"{name} images")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise EvalError(f"{name} labels must be [{images.shape[0]}] (one per image), got "
                        f"{list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise EvalError(f"{name} labels must be integers, got {labels.dtype}")


def finetune(
    trunk: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    steps: int = 200,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Fine-tune a deep copy of `trunk` + a linear head; return test ``{"top1", "top5"}`` (%).

    SGD (momentum 0.9, weight decay 1e-4, cosine LR from `lr` to 0 over `steps`) on uint8
    images as given plus a random horizontal flip, batches drawn without replacement pass after
    pass in a seeded order. Everything random comes from `seed` (the global RNG is untouched).
    Top-5 is over ``min(5, num_classes)``. ``progress(step, steps)`` after each step. `trunk`
    (or a SwAVModel's trunk) is deep-copied before anything else and never modified.
    """
    _check_split(train_images, train_labels, "train")
    _check_split(test_images, test_labels, "test")
    check_labels((train_labels, "train"), (test_labels, "test"), num_classes=num_classes)
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise EvalError(f"finetune: steps ({steps}) and batch_size ({batch_size}) must be "
                        f">= 1, lr ({lr}) > 0")
    dev = default_device(device)
    model = copy.deepcopy(trunk_of(trunk)).to(dev)
    model.requires_grad_(True)
    with torch.no_grad(), eval_mode(model):
        width = model(device_batch(train_images[:1], dev)).flatten(1).shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(width, num_classes)
        nn.init.normal_(head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(head.bias)
    net = nn.Sequential(model, nn.Flatten(1), head).to(dev, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    generator = torch.Generator().manual_seed(seed)
    n = train_images.shape[0]
    batch_size = min(batch_size, n)
    order = torch.randperm(n, generator=generator)
    cursor = 0
    train_y = train_labels.to(dev, dtype=torch.long)
    net.train()
    for step in range(steps):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        rows = order[cursor : cursor + batch_size]
        cursor += batch_size
        images = train_images[rows].to(dev, non_blocking=True)
        flip = (torch.rand(rows.numel(), generator=generator) < 0.5).to(dev)
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(net(device_batch(images, dev)), train_y[rows.to(dev)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, steps)

    logits = extract_features(net, test_images, batch_size=batch_size, device=dev)
    top1, top5 = topk_correct(logits, test_labels, 5)
    n_test = test_images.shape[0]
    return {"top1": 100.0 * top1 / n_test, "top5": 100.0 * top5 / n_test}
