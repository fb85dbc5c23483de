"""Tests for seer_core.swav: Sinkhorn, the SwAV loss, the queue and the collapse helpers.

The references below are written independently of the implementation: the original SwAV
Sinkhorn in the linear domain (float64) and the multi-crop loss as explicit Python loops.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import seer_core.swav.loss  # noqa: F401  (the module the test patches)
from seer_core import swav
from seer_core.optim import LARS
from seer_core.swav import (
    SwAVQueue,
    cancel_prototype_gradients,
    collapse_suspected,
    effective_rank,
    prototype_usage_entropy,
    sinkhorn,
    swav_loss,
)


def swav_loss_with_codes(
    scores: torch.Tensor, n_crops: int, **kwargs: Any
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`swav_loss` and the codes ``[B, K]`` of each assigned crop, as the loss's own Sinkhorn
    calls returned them (recorded on the way through, so the loss runs unchanged)."""
    batch = scores.shape[0] // n_crops
    codes: list[torch.Tensor] = []

    def recording(*args: Any, **kw: Any) -> torch.Tensor:
        q = sinkhorn(*args, **kw)
        codes.append(q[-batch:])
        return q

    with mock.patch.object(swav.loss, "sinkhorn", recording):
        return swav_loss(scores, n_crops, **kwargs), codes


def reference_sinkhorn(out: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The original single-process algorithm, step by step, in float64."""
    Q = torch.exp(out.double() / epsilon).t()
    K, B = Q.shape
    Q = Q / Q.sum()
    for _ in range(iterations):
        Q = Q / Q.sum(dim=1, keepdim=True)
        Q = Q / K
        Q = Q / Q.sum(dim=0, keepdim=True)
        Q = Q / B
    return (Q * B).t()


def reference_loss(
    scores: torch.Tensor,
    n_crops: int,
    assign: tuple[int, ...],
    tau: float,
    eps: float,
    iters: int,
    queue_scores: list[torch.Tensor] | None = None,
    alpha: float | None = None,
    n_global: int = 2,
) -> torch.Tensor:
    """Loops over (assigned crop, other crop) pairs and samples, as the formulas read."""
    B = scores.shape[0] // n_crops
    crop = [scores[c * B : (c + 1) * B].double() for c in range(n_crops)]
    gg: list[torch.Tensor] = []
    gl: list[torch.Tensor] = []
    per_assigned = []
    for i, a in enumerate(assign):
        target = crop[a].detach()
        if queue_scores is not None:
            target = torch.cat([queue_scores[i].double(), target])
        q = reference_sinkhorn(target, eps, iters)[-B:]
        sub = []
        for v in range(n_crops):
            if v == a:
                continue
            total = 0.0
            for b in range(B):
                logits = crop[v][b] / tau
                log_p = logits - torch.log(torch.exp(logits - logits.max()).sum()) - logits.max()
                total = total - (q[b] * log_p).sum()
            ce = total / B
            sub.append(ce)
            (gg if v < n_global else gl).append(ce)
        per_assigned.append(sum(sub) / len(sub))
    if alpha is None:
        return sum(per_assigned) / len(per_assigned)
    return alpha * sum(gg) / len(gg) + (1 - alpha) * sum(gl) / len(gl)


def _scores(n_rows: int, k: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Cosine-like scores, as L2-normalised embeddings against L2-normalised prototypes give."""
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n_rows, 16, generator=g, dtype=torch.float64), dim=1)
    protos = F.normalize(torch.randn(k, 16, generator=g, dtype=torch.float64), dim=1)
    return (emb @ protos.t()).to(dtype)


# --------------------------------------------------------------------------------- Sinkhorn


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_matches_original_algorithm(iterations: int) -> None:
    scores = _scores(24, 10, seed=0, dtype=torch.float64)
    expected = reference_sinkhorn(scores, 0.05, iterations)
    torch.testing.assert_close(sinkhorn(scores, 0.05, iterations), expected, rtol=1e-10, atol=1e-12)
    got32 = sinkhorn(scores.float(), 0.05, iterations)
    torch.testing.assert_close(got32.double(), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_marginals() -> None:
    B, K = 40, 8
    scores = _scores(B, K, seed=1)
    codes = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert codes.shape == (B, K)
    assert (codes >= 0).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(B))
    # Three iterations already spread the batch roughly evenly; many iterations do it exactly.
    assert torch.allclose(codes.sum(dim=0), torch.full((K,), B / K), rtol=0.4)
    converged = sinkhorn(scores, epsilon=0.05, iterations=200)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((K,), B / K), rtol=1e-3, atol=0)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(B))


def test_sinkhorn_is_stable_for_small_epsilon_and_large_scores() -> None:
    g = torch.Generator().manual_seed(2)
    scores = 30.0 * torch.randn(32, 12, generator=g)  # exp(scores / 0.01) ~ e^9000
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        codes = sinkhorn(scores.to(dtype), epsilon=0.01, iterations=3)
        assert torch.isfinite(codes).all()
        torch.testing.assert_close(codes.sum(dim=1), torch.ones(32))
    # Cosine scores with eps=0.01: the original's exp overflows float32, ours agrees with float64.
    cos = _scores(32, 12, seed=3)
    assert not torch.isfinite(torch.exp(cos / 0.01 * 10)).all()
    codes = sinkhorn(cos, epsilon=0.01, iterations=3)
    torch.testing.assert_close(
        codes.double(), reference_sinkhorn(cos.double(), 0.01, 3), rtol=1e-3, atol=1e-5
    )


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_sinkhorn_dtypes_and_no_grad(dtype: torch.dtype, expected: torch.dtype) -> None:
    scores = _scores(8, 5, seed=4, dtype=dtype).requires_grad_(True)
    codes = sinkhorn(scores)
    assert codes.dtype == expected
    assert not codes.requires_grad
    reference = reference_sinkhorn(scores.detach().double(), 0.05, 3)
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
    torch.testing.assert_close(codes.double(), reference, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"epsilon": 0.0}, "epsilon"), ({"iterations": 0}, "iterations")],
)
def test_sinkhorn_validates(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        sinkhorn(torch.zeros(4, 3), **kwargs)
    with pytest.raises(ValueError, match="scores"):
        sinkhorn(torch.zeros(4))


# ------------------------------------------------------------------------------------ loss


@pytest.mark.parametrize(
    ("n_crops", "assign", "iters"), [(2, (0, 1), 3), (6, (0, 1), 3), (5, (1,), 10), (4, (0, 2), 1)]
)
def test_loss_matches_plain_loop(n_crops: int, assign: tuple[int, ...], iters: int) -> None:
    B, K = 6, 7
    scores = _scores(n_crops * B, K, seed=5, dtype=torch.float64)
    got = swav_loss(scores, n_crops, assign, temperature=0.1, sinkhorn_iterations=iters)
    expected = reference_loss(scores, n_crops, assign, 0.1, 0.05, iters)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    got32 = swav_loss(scores.float(), n_crops, assign, sinkhorn_iterations=iters)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected, rtol=1e-5, atol=1e-5)


def test_loss_with_queue_matches_plain_loop_and_returns_codes() -> None:
    B, K, n_crops = 4, 6, 4
    scores = _scores(n_crops * B, K, seed=6, dtype=torch.float64)
    queue = [_scores(12, K, seed=7 + i, dtype=torch.float64) for i in range(2)]
    loss, codes = swav_loss_with_codes(scores, n_crops, queue_scores=queue)
    expected = reference_loss(scores, n_crops, (0, 1), 0.1, 0.05, 3, queue_scores=queue)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    assert len(codes) == 2
    for i in range(2):
        full = reference_sinkhorn(torch.cat([queue[i], scores[i * B : (i + 1) * B]]), 0.05, 3)
        torch.testing.assert_close(codes[i], full[-B:], rtol=1e-10, atol=1e-12)
    # The queue changes the assignment (otherwise it would be useless).
    assert not torch.allclose(loss, swav_loss(scores, n_crops))


def test_global_local_alpha() -> None:
    B, K, n_crops, n_global = 5, 6, 6, 2
    scores = _scores(n_crops * B, K, seed=8, dtype=torch.float64)
    original = swav_loss(scores, n_crops)
    p_gg = 2 * (n_global - 1)  # assigned crops x other global crops
    p_gl = 2 * (n_crops - n_global)
    balanced = swav_loss(scores, n_crops, global_local_alpha=p_gg / (p_gg + p_gl))
    torch.testing.assert_close(balanced, original, rtol=1e-12, atol=1e-12)
    for alpha in (0.0, 0.3, 1.0):
        got = swav_loss(scores, n_crops, global_local_alpha=alpha, n_global_crops=n_global)
        expected = reference_loss(scores, n_crops, (0, 1), 0.1, 0.05, 3, alpha=alpha)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # Different weights give different losses: alpha is not ignored.
    assert not torch.allclose(
        swav_loss(scores, n_crops, global_local_alpha=0.9),
        swav_loss(scores, n_crops, global_local_alpha=0.1),
    )


def test_loss_gradient_against_finite_differences_local_crops() -> None:
    """Codes come from the global crops only, so the local crops' gradient is the full one."""
    B, K, n_crops = 3, 4, 4
    scores = _scores(n_crops * B, K, seed=9, dtype=torch.float64)
    fixed = scores[: 2 * B]
    local = scores[2 * B :].clone().requires_grad_(True)

    def f(local_scores: torch.Tensor) -> torch.Tensor:
        return swav_loss(torch.cat([fixed, local_scores]), n_crops)

    assert torch.autograd.gradcheck(f, (local,), eps=1e-6, atol=1e-7)


def test_loss_gradient_against_finite_differences_with_codes_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SwAV stops the gradient at the codes: with the codes held, gradcheck every score."""
    B, K, n_crops = 3, 4, 3
    scores = _scores(n_crops * B, K, seed=10, dtype=torch.float64).requires_grad_(True)
    held = [sinkhorn(scores[a * B : (a + 1) * B]) for a in (0, 1)]
    calls: list[int] = []

    def held_codes(target: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        i = len(calls) % 2
        calls.append(i)
        return held[i]

    monkeypatch.setattr(swav.loss, "sinkhorn", held_codes)  # where the loss looks it up
    for alpha in (None, 0.25):
        assert torch.autograd.gradcheck(
            lambda s, a=alpha: swav_loss(s, n_crops, global_local_alpha=a, n_global_crops=2),
            (scores,),
            eps=1e-6,
            atol=1e-7,
        )
    assert calls


def test_loss_gradient_does_not_flow_through_codes() -> None:
    B, K, n_crops = 4, 5, 2
    scores = _scores(n_crops * B, K, seed=11).requires_grad_(True)
    swav_loss(scores, n_crops).backward()
    codes = [sinkhorn(scores[a * B : (a + 1) * B]) for a in (0, 1)]
    with torch.no_grad():
        probs = F.softmax(scores / 0.1, dim=1)
    # d/ds_v of -mean q_a . log_softmax(s_v / tau) = (softmax - q_a) / (tau * B), halved (2 crops)
    expected = torch.cat([probs[:B] - codes[1], probs[B:] - codes[0]]) / (0.1 * B * 2)
    torch.testing.assert_close(scores.grad, expected, rtol=1e-4, atol=1e-6)


def test_loss_is_float32_under_autocast() -> None:
    scores = _scores(3 * 4, 6, seed=12)
    reference = swav_loss(scores, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = scores.to(torch.bfloat16)
        loss = swav_loss(low, 3)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, swav_loss(low.float(), 3))
    torch.testing.assert_close(loss, reference, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_crops": 1}, "n_crops"),
        ({"n_crops": 5}, "n_crops"),
        ({"crops_for_assign": ()}, "crops_for_assign"),
        ({"crops_for_assign": (0, 0)}, "crops_for_assign"),
        ({"crops_for_assign": (4,)}, "crops_for_assign"),
        ({"temperature": 0.0}, "temperature"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations"),
        ({"queue_scores": [torch.zeros(3, 6)]}, "queue_scores"),
        ({"queue_scores": [torch.zeros(3, 5), torch.zeros(3, 5)]}, "queue_scores"),
        ({"global_local_alpha": 1.5}, "global_local_alpha"),
        ({"global_local_alpha": 0.5, "crops_for_assign": (0, 2)}, "global_local_alpha"),
        ({"global_local_alpha": 0.5, "n_global_crops": 4}, "global_local_alpha"),
        ({"n_global_crops": 0}, "n_global_crops"),
    ],
)
def test_loss_validates_arguments(kwargs: dict, name: str) -> None:
    args = {"scores": _scores(4 * 3, 6, seed=13), "n_crops": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        swav_loss(**args)


# ------------------------------------------------------------------ two gloo processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, world: int, port: int, inputs: dict, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        result = {}
        for name, scores in inputs["scores"].items():
            local = scores[rank]
            result[f"codes_{name}"] = sinkhorn(local, epsilon=0.05, iterations=3)
            queue = [q[rank] for q in inputs["queues"]]
            n = inputs["n_crops"]
            result[f"loss_{name}"] = swav_loss(local, n)
            result[f"loss_queue_{name}"] = swav_loss(local, n, queue_scores=queue)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    world, B, K, n_crops = 2, 4, 6, 3
    full = _scores(world * n_crops * B, K, seed=14, dtype=torch.float64).view(world, n_crops, B, K)
    per_rank = [full[r].reshape(n_crops * B, K) for r in range(world)]
    queues = [
        _scores(world * 8, K, seed=15 + i, dtype=torch.float64).view(world, 8, K) for i in (0, 1)
    ]
    inputs = {"scores": {"f64": per_rank}, "queues": queues, "n_crops": n_crops}
    mp.spawn(
        _distributed_worker, args=(world, _free_port(), inputs, str(tmp_path)), nprocs=world
    )
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]

    # One process on the concatenated batch: crop c of every image of every rank.
    single = torch.cat([full[:, c].reshape(world * B, K) for c in range(n_crops)])
    codes_all = sinkhorn(torch.cat(per_rank), epsilon=0.05, iterations=3)
    for r in range(world):
        torch.testing.assert_close(
            results[r]["codes_f64"], codes_all[r * n_crops * B : (r + 1) * n_crops * B]
        )
    mean_loss = sum(res["loss_f64"] for res in results) / world  # what DDP's averaging gives
    torch.testing.assert_close(mean_loss, swav_loss(single, n_crops), rtol=1e-10, atol=1e-12)
    queue_all = [q.reshape(world * 8, K) for q in queues]
    mean_queue_loss = sum(res["loss_queue_f64"] for res in results) / world
    torch.testing.assert_close(
        mean_queue_loss, swav_loss(single, n_crops, queue_scores=queue_all), rtol=1e-10, atol=1e-12
    )


# ------------------------------------------------------------------------------- queue


def test_queue_fifo_start_and_use() -> None:
    B, dim, n_crops = 2, 3, 3
    queue = SwAVQueue(length=8, dim=dim, crops_for_assign=(0, 1), start_step=2, world_size=2)
    assert queue.length == 4
    protos = torch.eye(dim)

    def batch(step: int) -> torch.Tensor:
        # Row value encodes (step, crop, image) so the order can be read back.
        return torch.tensor(
            [[100.0 * step + 10 * c + b] * dim for c in range(n_crops) for b in range(B)]
        )

    for step in range(2):  # before start_step: nothing is kept
        assert queue.scores(protos) is None
        queue.push(batch(step), B, step)
    assert queue.filled == 0
    queue.push(batch(2), B, 2)
    assert queue.scores(protos) is None  # half full: not used yet
    queue.push(batch(3), B, 3)
    assert queue.in_use
    scores = queue.scores(protos)
    assert scores is not None and len(scores) == 2
    # Newest first: step 3's images, then step 2's, for each assigned crop.
    torch.testing.assert_close(scores[0][:, 0], torch.tensor([300.0, 301.0, 200.0, 201.0]))
    torch.testing.assert_close(scores[1][:, 0], torch.tensor([310.0, 311.0, 210.0, 211.0]))
    queue.push(batch(4), B, 4)
    scores = queue.scores([protos[:1], protos[1:]])  # prototypes in blocks
    assert scores is not None and scores[0].shape == (4, dim)
    torch.testing.assert_close(scores[0][:, 0], torch.tensor([400.0, 401.0, 300.0, 301.0]))
    assert scores[0].dtype == torch.float32


def test_queue_scores_use_current_prototypes() -> None:
    g = torch.Generator().manual_seed(16)
    queue = SwAVQueue(length=4, dim=5, crops_for_assign=(1,))
    emb = F.normalize(torch.randn(3 * 4, 5, generator=g), dim=1)
    queue.push(emb.half(), 4, step=0)
    w = F.normalize(torch.randn(7, 5, generator=g), dim=1)
    scores = queue.scores(w)
    assert scores is not None
    torch.testing.assert_close(scores[0], emb[4:8].half().float() @ w.t())


def test_queue_state_dict_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(17)
    queue = SwAVQueue(length=6, dim=4, start_step=0)
    for step in range(2):
        queue.push(torch.randn(2 * 2, 4, generator=g), 2, step)
    path = tmp_path / "queue.pt"
    torch.save(queue.state_dict(), path)
    restored = SwAVQueue(length=6, dim=4, start_step=0)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.filled == 4 and not restored.in_use
    torch.testing.assert_close(restored.embeddings, queue.embeddings)
    batch = torch.randn(4, 4, generator=g)
    queue.push(batch, 2, 2)
    restored.push(batch, 2, 2)
    w = torch.randn(3, 4, generator=g)
    for a, b in zip(queue.scores(w) or [], restored.scores(w) or [], strict=True):
        torch.testing.assert_close(a, b)
    assert queue.in_use

    smaller = SwAVQueue(length=4, dim=4)
    with pytest.raises(ValueError, match="shape"):
        smaller.load_state_dict(queue.state_dict())
    smaller.load_state_dict(queue.state_dict(), strict=False)  # world size grew: keep newest
    assert smaller.in_use
    torch.testing.assert_close(smaller.embeddings, queue.embeddings[:, :4])
    with pytest.raises(ValueError, match="crops"):
        SwAVQueue(length=6, dim=4, crops_for_assign=(0,)).load_state_dict(queue.state_dict())


def test_queue_validates() -> None:
    with pytest.raises(ValueError, match="length"):
        SwAVQueue(length=1, dim=4, world_size=2)
    with pytest.raises(ValueError, match="dim"):
        SwAVQueue(length=4, dim=0)
    queue = SwAVQueue(length=4, dim=4)
    with pytest.raises(ValueError, match="embeddings"):
        queue.push(torch.zeros(3, 4), 2, 0)
    disabled = SwAVQueue(length=0, dim=4)
    disabled.push(torch.zeros(4, 4), 2, 0)
    assert disabled.scores(torch.eye(4)) is None


# --------------------------------------------------------------- freezing and monitoring


def test_cancel_prototype_gradients_freezes_prototypes() -> None:
    torch.manual_seed(18)
    trunk = nn.Linear(4, 3)
    prototypes = nn.Linear(3, 5, bias=False)
    opt = LARS(list(trunk.parameters()) + list(prototypes.parameters()), lr=0.5)
    x = torch.randn(6, 4)
    for step in range(4):
        before = prototypes.weight.detach().clone()
        trunk_before = trunk.weight.detach().clone()
        opt.zero_grad()
        prototypes(trunk(x)).square().mean().backward()
        dropped = cancel_prototype_gradients(prototypes.parameters(), step, freeze_steps=2)
        assert dropped == (step < 2)
        assert (prototypes.weight.grad is None) == (step < 2)
        assert trunk.weight.grad is not None
        opt.step()
        assert torch.equal(prototypes.weight, before) == (step < 2)
        assert not torch.equal(trunk.weight, trunk_before)


def test_prototype_usage_entropy() -> None:
    K = 8
    assert prototype_usage_entropy(torch.full((4, K), 1 / K)) == pytest.approx(1.0)
    collapsed = F.one_hot(torch.full((4,), 3), K).float()
    assert prototype_usage_entropy(collapsed) == pytest.approx(0.0, abs=1e-12)
    two = F.one_hot(torch.tensor([0, 1, 0, 1]), K).float()
    assert prototype_usage_entropy(two) == pytest.approx(math.log(2) / math.log(K))
    codes = sinkhorn(_scores(64, K, seed=19), iterations=10)
    assert prototype_usage_entropy(codes) > 0.99  # Sinkhorn equipartitions


def test_effective_rank_counts_the_directions_a_batch_varies_in() -> None:
    g = torch.Generator().manual_seed(31)
    # Variance spread evenly over d orthogonal directions: rank d, whatever the offset and scale.
    for d in (1, 3, 8):
        basis = torch.linalg.qr(torch.randn(16, d, generator=g))[0].T  # [d, 16], orthonormal
        signs = torch.tensor([[1.0], [-1.0]]).repeat(d, 1)  # +e_i and -e_i for each direction
        rows = 5.0 * signs * basis.repeat_interleave(2, dim=0) + 3.0
        assert effective_rank(rows) == pytest.approx(d, rel=1e-6)
    # Isotropic noise: close to the most a batch of N rows can show (N - 1 after centring).
    wide = torch.randn(64, 128, generator=g, dtype=torch.float64)
    assert 40 < effective_rank(wide) <= 63
    # One direction taking over (a batch sliding onto one cue): the rank falls towards 1.
    cue = torch.randn(64, 1, generator=g) * torch.randn(1, 128, generator=g)
    ranks = [effective_rank(cue + noise * wide.float()) for noise in (1.0, 0.3, 0.1, 0.01)]
    assert ranks == sorted(ranks, reverse=True) and ranks[-1] < 1.5 < ranks[0]
    assert effective_rank(torch.ones(8, 4)) == 0.0  # no variance at all
    assert math.isnan(effective_rank(torch.tensor([[1.0, float("inf")], [0.0, 1.0]])))
    with pytest.raises(ValueError, match=r"\[N, D\] with N >= 2"):
        effective_rank(torch.ones(1, 4))


def test_collapse_suspected() -> None:
    K = 3000
    assert collapse_suspected(math.log(K), K)
    assert collapse_suspected(math.log(K) + 0.5, K)
    assert not collapse_suspected(0.8 * math.log(K), K)
    assert not collapse_suspected(float("nan"), K)
    # A collapsed representation with equipartitioned codes and uniform predictions gives ln K.
    B = 16
    scores = torch.zeros(2 * B, 10)
    assert collapse_suspected(float(swav_loss(scores, 2)), 10)
    # Two views that agree and spread over the prototypes: a healthy, low loss.
    views = _scores(B, 10, seed=20).repeat(2, 1)
    assert not collapse_suspected(float(swav_loss(views, 2)), 10)
