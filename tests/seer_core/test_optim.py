"""Tests for seer_core.optim: LARS against its formula written out by hand, and param groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from seer_core.optim import LARS, param_groups, set_lr


def hand_lars(
    w: torch.Tensor,
    grads: list[torch.Tensor],
    lr: float,
    wd: float,
    exclude: bool,
    clip: bool = False,
    eta: float = 0.001,
    eps: float = 1e-8,
    momentum: float = 0.9,
) -> torch.Tensor:
    """Several LARS steps in float64 with plain Python arithmetic on the norms."""
    w = w.double().clone()
    buf = None
    for g in grads:
        g = g.double().clone()
        if not exclude:
            wn = w.norm().item()
            gn = g.norm().item()
            if wn > 0 and gn > 0:
                local = eta * wn / (gn + wd * wn + eps)
                if clip:
                    local = min(local / lr, 1.0)
                g = (g + wd * w) * local
        buf = g if buf is None else momentum * buf + g
        w = w - lr * buf
    return w


def _run_lars(
    w0: torch.Tensor, grads: list[torch.Tensor], **group: object
) -> tuple[torch.Tensor, LARS]:
    p = nn.Parameter(w0.clone())
    opt = LARS([{"params": [p], **group}], lr=group.get("lr", 0.1))  # type: ignore[arg-type]
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


@pytest.mark.parametrize(
    ("wd", "exclude", "clip", "lr"),
    [
        (0.0, False, False, 0.3),
        (1e-2, False, False, 0.3),
        (1e-2, True, False, 0.3),
        (1e-2, False, True, 0.3),  # trust ratio / lr < 1: clipping leaves it as it is
        (1e-2, False, True, 1e-5),  # trust ratio / lr > 1: clipped to 1, i.e. plain SGD
    ],
)
def test_lars_matches_formula(wd: float, exclude: bool, clip: bool, lr: float) -> None:
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    grads = [torch.randn(4, 3, generator=g, dtype=torch.float64) * s for s in (1.0, 5.0, 0.1)]
    got, _ = _run_lars(w0, grads, lr=lr, weight_decay=wd, lars_exclude=exclude, clip=clip)
    expected = hand_lars(w0, grads, lr, wd, exclude, clip)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_lars_float32_and_trust_ratio_effect() -> None:
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(8, 8, generator=g)
    big = [torch.randn(8, 8, generator=g) * 1000.0]
    got, _ = _run_lars(w0, big, lr=1.0, weight_decay=1e-5)
    expected = hand_lars(w0, big, 1.0, 1e-5, False)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    # The trust ratio makes the step size independent of the gradient's scale: |dw| = eta |w|.
    step = (got - w0).norm() / w0.norm()
    assert step.item() == pytest.approx(0.001, rel=1e-3)


def test_lars_zero_norms_leave_gradient_untouched() -> None:
    zero_w = torch.zeros(3, 2, dtype=torch.float64)
    grad = torch.ones(3, 2, dtype=torch.float64)
    got, _ = _run_lars(zero_w, [grad], lr=0.1, weight_decay=0.5)
    torch.testing.assert_close(got, zero_w - 0.1 * grad)  # no trust ratio when |w| = 0
    w = torch.ones(3, 2, dtype=torch.float64)
    got, _ = _run_lars(w, [torch.zeros_like(w)], lr=0.1, weight_decay=0.5)
    torch.testing.assert_close(got, w)  # |g| = 0: LARC skips the decay too


def test_lars_skips_parameters_without_gradient_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = LARS(param_groups(model, weight_decay=1e-4), lr=0.05)
    x = torch.randn(8, 3)
    model(x).square().mean().backward()
    model[2].weight.grad = None
    frozen = model[2].weight.detach().clone()
    opt.step()
    assert torch.equal(model[2].weight, frozen)
    assert model[2].weight not in opt.state
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    clone = LARS(param_groups(model, weight_decay=1e-4), lr=0.05)
    clone.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert clone.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    buf = opt.state[model[0].weight]["momentum_buffer"]
    torch.testing.assert_close(clone.state[model[0].weight]["momentum_buffer"], buf)


def test_param_groups_split_bias_and_norm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)
    groups = param_groups(model, weight_decay=1e-5)
    assert [g["lars_exclude"] for g in groups] == [False, True]
    assert groups[0]["weight_decay"] == 1e-5 and groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in groups[1]["params"]} == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias)
    }
    single = param_groups(model, weight_decay=1e-5, exclude_bias_and_norm=False)
    assert len(single) == 1 and len(single[0]["params"]) == 5
    assert param_groups(nn.Sequential(nn.BatchNorm1d(2)), 0.1)[0]["lars_exclude"] is True


def test_excluded_group_gets_plain_sgd_in_a_model() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = LARS(param_groups(model, weight_decay=0.1), lr=0.2)
    model(torch.randn(5, 3)).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for name, p in model.named_parameters():
        exclude = p.ndim == 1
        expected = hand_lars(before[name], [grads[name]], 0.2, 0.0 if exclude else 0.1, exclude)
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-7)


def test_set_lr_and_validation() -> None:
    model = nn.Linear(2, 2)
    opt = LARS(param_groups(model, 0.0), lr=0.1)
    set_lr(opt, 0.7)
    assert [g["lr"] for g in opt.param_groups] == [0.7, 0.7]
    for kwargs, name in [({"lr": -1.0}, "lr"), ({"momentum": 1.0}, "momentum"),
                         ({"eta": 0.0}, "eta"), ({"weight_decay": -1.0}, "weight_decay")]:
        args = {"lr": 0.1, **kwargs}
        with pytest.raises(ValueError, match=name):
            LARS(model.parameters(), **args)
