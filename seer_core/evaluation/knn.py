"""Weighted k-nearest-neighbour classification on frozen features (the kNN monitor).

The protocol of Wu et al. 2018 (instance discrimination) as DINO's ``eval_knn`` runs it: cosine
similarity on L2-normalised features, the k most similar training images vote for their class
with weight ``exp(sim / T)``. It needs no training and no hyper-parameter search, so it is the
cheap signal the evaluator computes for every checkpoint of a never-ending run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seer_core.evaluation.checks import EvalError, check_pair, topk_correct


def _nearest(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices) of the k largest entries per row, ties to the lower index.

    ``topk`` alone may pick any of several equal similarities at the k-th place, and which one
    depends on the kernel. Rows where the k-th and (k+1)-th values are equal (rare with real
    features, common with duplicated images) are redone with a stable sort, which keeps the
    lower training index first.
    """
    n = sim.shape[1]
    if k == n:
        return torch.sort(sim, dim=1, descending=True, stable=True)
    values, indices = sim.topk(k + 1, dim=1, largest=True, sorted=True)
    tied = values[:, k - 1] == values[:, k]
    values, indices = values[:, :k], indices[:, :k]
    if bool(tied.any()):
        rows = tied.nonzero().flatten()
        v, i = torch.sort(sim[rows], dim=1, descending=True, stable=True)
        values[rows], indices[rows] = v[:, :k], i[:, :k]
    return values, indices


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) of the weighted kNN vote on the test split.

    Runs on the device the features are on. Test rows go `batch_size` at a time, so the
    similarity block is ``batch_size x N_train`` floats (4 GB for 1024 x 1M): lower it for very
    large training sets. Top-5 is over ``min(5, num_classes)`` classes. Classes with equal vote
    mass rank the lower class index first, so the result is deterministic.
    """
    n_classes = check_pair(train_features, train_labels, test_features, test_labels, num_classes)
    n_train = train_features.shape[0]
    if k < 1:
        raise EvalError(f"kNN: k must be >= 1, got {k}")
    if k > n_train:
        raise EvalError(f"kNN: fewer training images ({n_train}) than k ({k}); lower k")
    if not temperature > 0:
        raise EvalError(f"kNN: temperature must be > 0, got {temperature}")
    if batch_size < 1:
        raise EvalError(f"kNN: batch_size must be >= 1, got {batch_size}")
    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)
    train_y = train_labels.to(device=device, dtype=torch.long)
    top1 = top5 = 0
    n_test = test_features.shape[0]
    for start in range(0, n_test, batch_size):
        feats = F.normalize(test_features[start : start + batch_size].to(device).float(), dim=1)
        sim, idx = _nearest(feats @ train.T, k)
        # exp(sim / T) scaled by the row's constant exp(-max / T): the same vote ranking, and
        # no overflow to inf for small temperatures.
        weights = ((sim - sim[:, :1]) / temperature).exp()
        votes = torch.zeros(feats.shape[0], n_classes, device=device, dtype=torch.float32)
        votes.scatter_add_(1, train_y[idx], weights)
        targets = test_labels[start : start + batch_size].to(device)
        hit1, hit5 = topk_correct(votes, targets, 5)
        top1 += hit1
        top5 += hit5
    return {"top1": 100.0 * top1 / n_test, "top5": 100.0 * top5 / n_test}
