"""Tests for seer_core.evaluation: kNN, linear probe, low-shot, features, trunks, fine-tuning.

Everything is seeded and tiny (trunk "tiny" or other trunks at 32-64 px, a few hundred feature
rows) so each test takes well under two seconds on a shared 2-core machine. Expected values are
computed by hand where the protocol allows it (the weighted kNN vote, the low-shot counts).
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn

from seer_core.augment import normalize
from seer_core.checkpoint import load_state, save_state
from seer_core.config import config_from_dict
from seer_core.evaluation import (
    EVAL_STAGES,
    EvalError,
    LowShotResult,
    extract_features,
    finetune,
    frozen_trunk,
    knn_classify,
    linear_probe,
    lowshot,
    lowshot_indices,
    preprocess,
    random_trunk,
    stratified_holdout,
    trunk_from_checkpoint,
)
from seer_core.models import build_swav_model, build_trunk


def _rotation(d: int, seed: int) -> torch.Tensor:
    """A random orthogonal matrix: moves class structure off the coordinate axes."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    return q


def _clusters(
    n_per_class: int, n_classes: int, d: int, seed: int, spread: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters around well-separated random centres, rotated off the axes."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(n_classes, d, generator=torch.Generator().manual_seed(1234))
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = centres[labels] + spread * torch.randn(labels.numel(), d, generator=g)
    return x @ _rotation(d, 99), labels


# --------------------------------------------------------------------------------------- kNN


def test_knn_separable_features_are_all_right() -> None:
    train_x, train_y = _clusters(20, 4, 16, seed=0)
    test_x, test_y = _clusters(10, 4, 16, seed=1)
    out = knn_classify(train_x, train_y, test_x, test_y, k=5, batch_size=7)
    assert out == {"top1": 100.0, "top5": 100.0}


def _vote_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query at angle 0. One class-0 image at angle 0 (cosine 1), three class-1 images at
    cosine 0.9, one class-2 image far away (cosine -1)."""
    a = math.acos(0.9)
    train = torch.tensor(
        [[1.0, 0.0], [math.cos(a), math.sin(a)], [math.cos(a), -math.sin(a)],
         [2 * math.cos(a), 2 * math.sin(a)], [-1.0, 0.0]]
    )
    return train, torch.tensor([0, 1, 1, 1, 2]), torch.tensor([[5.0, 0.0]]), torch.tensor([1])


def test_knn_weighted_vote_matches_hand_computation() -> None:
    train_x, train_y, test_x, test_y = _vote_case()
    # k=4, T=0.1: class 0 gets exp(1/0.1) = 22026, class 1 gets 3 exp(0.9/0.1) = 24309: the
    # nearest neighbour is class 0 but the weight mass is class 1's.
    assert 3 * math.exp(9.0) > math.exp(10.0)
    out = knn_classify(train_x, train_y, test_x, test_y, k=4, temperature=0.1)
    assert out["top1"] == 100.0
    # k=1: only the class-0 neighbour votes.
    assert knn_classify(train_x, train_y, test_x, test_y, k=1, temperature=0.1)["top1"] == 0.0
    # T=0.02: exp(50) > 3 exp(45), the single nearest image outweighs the three.
    assert knn_classify(train_x, train_y, test_x, test_y, k=4, temperature=0.02)["top1"] == 0.0
    # top-2 of 3 classes: class 1 is second when class 0 wins.
    out = knn_classify(train_x, train_y, test_x, test_y, k=4, temperature=0.02)
    assert out["top5"] == 100.0


def test_knn_ties_break_to_the_lower_index_whatever_the_chunking() -> None:
    train_x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    train_y = torch.tensor([1, 0, 0, 2])
    test_x = torch.tensor([[1.0, 0.0]] * 3)
    test_y = torch.tensor([1, 1, 1])
    for batch_size in (1, 2, 1024):
        out = knn_classify(train_x, train_y, test_x, test_y, k=1, batch_size=batch_size)
        assert out["top1"] == 100.0
    # k=2 among three equal images: indices 0 and 1 (one vote each, class 0 < class 1 wins).
    assert knn_classify(train_x, train_y, test_x, test_y, k=2)["top1"] == 0.0


def test_knn_rejects_k_above_the_training_set_and_bad_labels() -> None:
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 1])
    with pytest.raises(EvalError, match=r"fewer training images \(3\) than k \(5\)"):
        knn_classify(x, y, x, y, k=5)
    with pytest.raises(EvalError, match="test label 3 is out of range"):
        knn_classify(x, y, x, torch.tensor([0, 1, 3]), k=1, num_classes=2)
    with pytest.raises(EvalError, match="width 4 but test features 5"):
        knn_classify(x, y, torch.randn(3, 5), y, k=1)
    with pytest.raises(EvalError, match="test split is empty"):
        knn_classify(x, y, torch.randn(0, 4), torch.tensor([], dtype=torch.long), k=1)


# ------------------------------------------------------------------------------ linear probe

FAST = {"epochs": 30, "batch_size": 64}


def _separable(seed: int, n: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels from a random linear rule (margin enforced), in rotated coordinates: linearly
    separable, but no single feature decides the class."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 3, generator=torch.Generator().manual_seed(7))
    x = torch.randn(4 * n, 24, generator=g)
    scores = x @ w
    top2 = scores.topk(2, dim=1).values
    keep = (top2[:, 0] - top2[:, 1]) > 0.5  # a margin, so that the rule is learnable
    return x[keep][:n], scores[keep][:n].argmax(1)


def test_linear_probe_learns_a_rotated_separable_problem() -> None:
    train_x, train_y = _separable(0)
    test_x, test_y = _separable(1)
    result = linear_probe(train_x, train_y, test_x, test_y, batch_size=64)  # 100 epochs
    assert result.top1 >= 95.0
    assert result.top5 == 100.0  # 3 classes: top-"5" is top-3
    assert result.holdout_top1 >= 85.0
    assert result.lr in (0.1, 1.0, 10.0)


def test_linear_probe_sweep_never_looks_at_the_test_split() -> None:
    train_x, train_y = _separable(0, n=150)
    test_x, test_y = _separable(1, n=60)
    a = linear_probe(train_x, train_y, test_x, test_y, **FAST)
    shuffled = test_y[torch.randperm(60, generator=torch.Generator().manual_seed(3))]
    b = linear_probe(train_x, train_y, torch.randn(60, 24), shuffled, **FAST)
    assert (a.lr, a.weight_decay, a.holdout_top1) == (b.lr, b.weight_decay, b.holdout_top1)
    assert a.top1 != b.top1  # the test split did change, only the test numbers saw it
    again = linear_probe(train_x, train_y, test_x, test_y, **FAST)
    assert again == a  # deterministic given the seed


def test_stratified_holdout_keeps_every_class_in_both_parts() -> None:
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 1)
    kept, held = stratified_holdout(labels, 0.2, seed=0)
    assert torch.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]
    assert torch.bincount(labels[kept], minlength=3).tolist() == [8, 1, 1]
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(13))


def test_linear_probe_validates_its_inputs() -> None:
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    with pytest.raises(EvalError, match="train labels must be >= 0"):
        linear_probe(x, torch.tensor([-1, 1] * 4), x, y)
    with pytest.raises(EvalError, match="train: 8 feature rows but 7 labels"):
        linear_probe(x, y[:7], x, y)
    with pytest.raises(EvalError, match=r"test features must be \[N, D\]"):
        linear_probe(x, y, torch.randn(8), y)
    with pytest.raises(EvalError, match="train split is empty"):
        linear_probe(x[:0], y[:0], x, y)
    with pytest.raises(EvalError, match="holdout_fraction"):
        linear_probe(x, y, x, y, holdout_fraction=1.0)
    with pytest.raises(EvalError, match="NaN"):
        linear_probe(x.masked_fill(x > 1, math.nan), y, x, y)


# ---------------------------------------------------------------------------------- low-shot


def test_lowshot_indices_pick_exactly_the_share_of_each_class() -> None:
    labels = torch.tensor([0] * 10 + [1] * 25 + [2] * 7 + [3] * 1)[
        torch.randperm(43, generator=torch.Generator().manual_seed(0))
    ]
    expected = {0.1: [1, 2, 1, 1], 0.5: [5, 12, 4, 1], 1.0: [10, 25, 7, 1]}  # round(12.5) = 12
    for fraction, counts in expected.items():
        idx = lowshot_indices(labels, fraction, seed=0)
        assert torch.bincount(labels[idx], minlength=4).tolist() == counts
        assert idx.tolist() == sorted(set(idx.tolist()))  # sorted, no repeats
        assert counts == [max(1, round(fraction * n)) for n in (10, 25, 7, 1)]
    assert torch.equal(lowshot_indices(labels, 0.5, 1), lowshot_indices(labels, 0.5, 1))
    assert not torch.equal(lowshot_indices(labels, 0.5, 1), lowshot_indices(labels, 0.5, 2))
    with pytest.raises(EvalError, match="fraction"):
        lowshot_indices(labels, 0.0, 0)


def test_lowshot_reports_mean_and_std_over_seeds() -> None:
    train_x, train_y = _clusters(12, 3, 8, seed=0, spread=2.0)
    test_x, test_y = _clusters(10, 3, 8, seed=1, spread=2.0)
    results = lowshot(
        train_x, train_y, test_x, test_y, fractions=(0.1, 0.5), seeds=(0, 1, 2), **FAST
    )
    assert [r.fraction for r in results] == [0.1, 0.5]
    for r in results:
        assert isinstance(r, LowShotResult)
        assert len(r.per_seed_top1) == 3
        assert r.top1_mean == pytest.approx(statistics.fmean(r.per_seed_top1))
        assert r.top1_std == pytest.approx(statistics.pstdev(r.per_seed_top1))
    # 10% of 12 is one image per class: no sweep, the first grid point, the subset of that seed.
    idx = lowshot_indices(train_y, 0.1, 1)
    direct = linear_probe(
        train_x[idx], train_y[idx], test_x, test_y, lrs=(0.1,), weight_decays=(0.0,), seed=1,
        holdout_fraction=0.0, **FAST
    )
    assert results[0].per_seed_top1[1] == direct.top1
    single = lowshot(train_x, train_y, test_x, test_y, fractions=(0.5,), seeds=(4,), **FAST)
    assert single[0].top1_std == 0.0


# ---------------------------------------------------------------------------------- features

# res4 / res5 widths at any input size: stage before the last, and the final pooled features.
WIDTHS = {
    "tiny": (32, 64),
    "small": (128, 256),
    "resnet18": (256, 512),
    "mobilenet_v2": (96, 1280),
    "regnety_400mf": (208, 440),
}
RES4_MODULE = {
    "tiny": "trunk_output.block3",
    "small": "trunk_output.block3",
    "resnet18": "layer3",
    "mobilenet_v2": "features.13",
    "regnety_400mf": "trunk_output.block3",
}


@pytest.mark.parametrize("name", list(WIDTHS))
def test_frozen_trunk_stage_shapes_and_values(name: str) -> None:
    trunk = random_trunk(name, seed=0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    hook = trunk.get_submodule(RES4_MODULE[name]).register_forward_hook(
        lambda _m, _i, out: seen.append(out.mean(dim=(2, 3)))
    )
    with torch.no_grad():
        reference = trunk(x)
    hook.remove()
    for stage, width in zip(EVAL_STAGES, WIDTHS[name]):
        model = frozen_trunk(trunk, stage)
        out = model(x)
        assert out.shape == (2, width) and model.out_features == width
        expected = seen[0] if stage == "res4" else reference
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_frozen_trunk_changes_nothing_and_rejects_unknown_stages() -> None:
    trunk = build_trunk("tiny").train()
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    out = frozen_trunk(trunk, "res4")(torch.randn(4, 3, 32, 32))
    assert not out.requires_grad
    assert trunk.training and all(m.training for m in trunk.modules())
    assert all(torch.equal(v, trunk.state_dict()[k]) for k, v in before.items())  # BN stats
    model = build_swav_model("tiny", [16], 8, False, [5])
    assert frozen_trunk(model).trunk is model.trunk
    with pytest.raises(EvalError, match="res4, res5"):
        frozen_trunk(trunk, "res3")
    with pytest.raises(EvalError, match="Linear is not a torchvision"):
        frozen_trunk(nn.Linear(3, 3))


def test_extract_features_matches_a_manual_forward_and_restores_train_mode() -> None:
    trunk = random_trunk("tiny", seed=1).train()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    calls: list[tuple[int, int]] = []
    feats = extract_features(trunk, images, batch_size=2, device="cpu",
                             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert trunk.training and feats.dtype == torch.float32 and feats.shape == (5, 64)
    manual = random_trunk("tiny", seed=1).eval()
    with torch.no_grad():
        expected = manual(normalize(images))
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)
    again = extract_features(trunk, images, batch_size=2, device="cpu")
    assert torch.equal(feats, again)
    res4 = extract_features(frozen_trunk(trunk, "res4"), images, device="cpu")
    assert res4.shape == (5, 32)
    with pytest.raises(EvalError, match=r"\[N, 3, H, W\]"):
        extract_features(trunk, images[:, :2], device="cpu")


def test_preprocess_is_resize_then_centre_crop() -> None:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (90, 120, 3), dtype=torch.uint8, generator=g).numpy()
    img = Image.fromarray(pixels)
    out = preprocess(img, size=56)
    assert out.shape == (3, 56, 56) and out.dtype == torch.uint8
    reference = T.Compose([T.Resize(64), T.CenterCrop(56), T.PILToTensor()])(img)
    assert torch.equal(out, reference)
    assert preprocess(img.convert("L"), size=32, resize=40).shape == (3, 32, 32)
    with pytest.raises(EvalError, match="resize"):
        preprocess(img, size=56, resize=50)


# ------------------------------------------------------------------------------------ trunks


def _tiny_checkpoint(trunk: str = "tiny") -> tuple[dict, nn.Module]:
    cfg = config_from_dict(
        {"model": {"trunk": trunk, "head_hidden": [16], "head_out": 8, "prototypes": [5]}}
    )
    torch.manual_seed(0)
    m = cfg.model
    model = build_swav_model(m.trunk, m.head_hidden, m.head_out, m.head_batchnorm, m.prototypes)
    return {"model": model.state_dict(), "config": cfg.to_dict(), "step": 7}, model


def test_trunk_from_checkpoint_round_trips_through_disk(tmp_path) -> None:
    saved, model = _tiny_checkpoint()
    save_state(saved, tmp_path / "step_7" / "state.pt")
    trunk, cfg = trunk_from_checkpoint(load_state(tmp_path / "step_7"))
    assert cfg.model.trunk == "tiny" and not trunk.training
    expected = model.trunk.state_dict()
    assert trunk.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in trunk.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(trunk(x), model.trunk.eval()(x))
    ddp_style = dict(saved, model={f"module.{k}": v for k, v in saved["model"].items()})
    assert trunk_from_checkpoint(ddp_style)[0].state_dict().keys() == expected.keys()


def test_trunk_from_checkpoint_rejects_another_architecture() -> None:
    saved, _ = _tiny_checkpoint()
    other, _ = _tiny_checkpoint("resnet18")
    with pytest.raises(EvalError, match=r"'resnet18'.*missing: trunk\.conv1\.weight"):
        trunk_from_checkpoint(dict(saved, config=other["config"]))
    with pytest.raises(EvalError, match="needs 'model' and 'config'"):
        trunk_from_checkpoint({"model": saved["model"]})


def test_random_trunk_is_deterministic_by_seed_and_leaves_the_global_rng() -> None:
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a, b, c = random_trunk("tiny", 0), random_trunk("tiny", 0), random_trunk("tiny", 1)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    with pytest.raises(EvalError, match=r"unknown trunk 'vit'.*tiny"):
        random_trunk("vit")


# ---------------------------------------------------------------------------------- finetune


def _colour_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 images are reddish, class 1 bluish, under noise: trivially separable."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.where(labels.view(-1, 1, 1, 1) == 0,
                       torch.tensor([200.0, 40.0, 40.0]).view(1, 3, 1, 1),
                       torch.tensor([40.0, 40.0, 200.0]).view(1, 3, 1, 1))
    noisy = base + 40.0 * torch.randn(n, 3, 32, 32, generator=g)
    return noisy.clamp(0, 255).to(torch.uint8), labels


def test_finetune_learns_a_toy_task_and_leaves_the_trunk_alone() -> None:
    trunk = random_trunk("tiny", seed=0)
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    grads = [p.requires_grad for p in trunk.parameters()]
    train_x, train_y = _colour_task(32, 0)
    test_x, test_y = _colour_task(20, 1)
    steps: list[int] = []
    out = finetune(trunk, train_x, train_y, test_x, test_y, num_classes=2, steps=25, lr=0.05,
                   batch_size=16, device="cpu", progress=lambda s, total: steps.append(s))
    assert out["top1"] >= 90.0 and out["top5"] == 100.0
    assert steps == list(range(1, 26))
    assert all(torch.equal(v, trunk.state_dict()[k]) for k, v in before.items())
    assert [p.requires_grad for p in trunk.parameters()] == grads and not trunk.training
    with pytest.raises(EvalError, match="train label 2 is out of range"):
        finetune(trunk, train_x, train_y + 1, test_x, test_y, num_classes=2, steps=1)
