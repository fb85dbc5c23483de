"""What a bad input to an evaluation protocol is, and the one error type that says so.

The protocols run unattended in the periodic evaluator, on labelled sets that users assemble by
hand: an empty class, a label out of range or features of two different widths are user errors,
not bugs, and the message must say which argument is wrong and how, so the evaluator can log it
and carry on with the next checkpoint.
"""

from __future__ import annotations

import torch


class EvalError(ValueError):
    """Bad input to an evaluation protocol; the message names what is wrong and where."""


def check_split(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    """`features` float ``[N,D]`` and `labels` integer ``[N]`` with N >= 1, finite features.

    `name` ("train", "test") is the split named in the message.
    """
    if not isinstance(features, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise EvalError(f"{name}: features and labels must be tensors")
    if features.dim() != 2:
        raise EvalError(f"{name} features must be [N, D], got shape {list(features.shape)}")
    if not features.is_floating_point():
        raise EvalError(f"{name} features must be floating point, got {features.dtype}")
    if labels.dim() != 1:
        raise EvalError(f"{name} labels must be [N], got shape {list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise EvalError(f"{name} labels must be integers, got {labels.dtype}")
    if features.shape[0] != labels.shape[0]:
        raise EvalError(f"{name}: {features.shape[0]} feature rows but {labels.shape[0]} labels")
    if features.shape[0] == 0:
        raise EvalError(f"{name} split is empty")
    if features.shape[1] == 0:
        raise EvalError(f"{name} features have width 0")
    if not bool(torch.isfinite(features).all()):
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise EvalError(f"{name} features: {bad} rows hold NaN or infinite values")


def check_pair(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None,
) -> int:
    """Validate a train/test pair of splits; return the number of classes.

    `num_classes` defaults to ``1 + max label`` over both splits; an explicit value must cover
    every label. Labels must be >= 0. The two splits must have the same feature width.
    """
    check_split(train_features, train_labels, "train")
    check_split(test_features, test_labels, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise EvalError(f"train features have width {train_features.shape[1]} but test features "
                        f"{test_features.shape[1]}")
    return check_labels((train_labels, "train"), (test_labels, "test"), num_classes=num_classes)


def check_labels(*splits: tuple[torch.Tensor, str], num_classes: int | None) -> int:
    """Labels of every split in ``[0, num_classes)``; return num_classes (inferred if None)."""
    highest = max(int(labels.max()) for labels, _ in splits)
    for labels, name in splits:
        low = int(labels.min())
        if low < 0:
            raise EvalError(f"{name} labels must be >= 0, found {low}")
    if num_classes is None:
        return highest + 1
    if num_classes < 1:
        raise EvalError(f"num_classes must be >= 1, got {num_classes}")
    for labels, name in splits:
        top = int(labels.max())
        if top >= num_classes:
            raise EvalError(f"{name} label {top} is out of range for num_classes={num_classes}")
    return num_classes


def topk_correct(scores: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[int, int]:
    """(top-1 hits, top-k hits) of class scores ``[N,C]`` against ``[N]`` targets.

    Classes are ranked by a stable descending sort, so equal scores rank the lower class index
    first: the result never depends on the kernel that happened to run.
    """
    k = min(k, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    hits = order.eq(targets.view(-1, 1).to(order.device))
    return int(hits[:, :1].sum()), int(hits.any(dim=1).sum())
