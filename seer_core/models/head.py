"""SwAV projection head, prototypes, and the trunk+head model.

The head maps trunk features to an L2-normalised embedding and scores it against one or more
sets of prototypes. The prototype scores feed Sinkhorn-Knopp, which exponentiates them by
1/epsilon = 20: exp(20) is past float16's range, so the scores are computed in float32 even when
the rest of the step runs under autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seer_core.models.trunks import build_trunk

# SEER's head (VISSL `heads/d10444_d8192_d8192_d256_proto16k.yaml`): no BN, D->8192->8192->256,
# 16000 prototypes.
SEER_HEAD_HIDDEN: tuple[int, ...] = (8192, 8192)
SEER_HEAD_OUT = 256
SEER_PROTOTYPES = 16000


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[object]:
    """Disable autocast for `device_type`; a no-op on devices autocast does not know (meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class SwAVHead(nn.Module):
    """MLP projection ``(Linear [BN] ReLU)* -> Linear`` then bias-free prototype layers.

    SEER uses no BN (BatchNorm1d across a small per-GPU batch in a 8192-wide MLP costs more than
    it helps); SwAV-ResNet-50 uses ``2048 -> 2048 BN ReLU -> 128``. Several prototype heads are
    allowed (SwAV's multi-prototype variant); each returns its own score tensor.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        batchnorm: bool,
        n_prototypes: int | Sequence[int],
    ) -> None:
        super().__init__()
        counts = [n_prototypes] if isinstance(n_prototypes, int) else list(n_prototypes)
        if in_dim <= 0 or out_dim <= 0 or any(h <= 0 for h in hidden_dims):
            raise ValueError(f"head dims must be positive: {in_dim}, {list(hidden_dims)}, "
                             f"{out_dim}")
        if not counts or any(k <= 0 for k in counts):
            raise ValueError(f"n_prototypes must be positive: {n_prototypes!r}")
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers.append(nn.Linear(width, hidden))
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU(inplace=True))
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.projection = nn.Sequential(*layers)
        self.prototypes = nn.ModuleList(nn.Linear(out_dim, k, bias=False) for k in counts)
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.n_prototypes: tuple[int, ...] = tuple(counts)
        # Start on the unit sphere, as every step will: scores are cosine similarities from step 0.
        self.normalize_prototypes()

    def forward(self, features: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Return the unit-norm embedding ``[N,out_dim]`` and one ``[N,K_h]`` score per head.

        Both are float32 whatever autocast does: the embedding is normalised in float32 (a
        bf16 norm loses ~3 digits, and the queue stores these), and the prototype matmul runs
        with autocast disabled on float32 operands.
        """
        z = self.projection(features)
        with _autocast_off(z.device.type):
            z = F.normalize(z.float(), dim=1)
            scores = [F.linear(z, p.weight.float()) for p in self.prototypes]
        return z, scores

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """L2-normalise every prototype row in place (SwAV does this before every step)."""
        for layer in self.prototypes:
            w = layer.weight
            w.copy_(F.normalize(w.float(), dim=1).to(w.dtype))

    def prototype_parameters(self) -> list[nn.Parameter]:
        """The prototype matrices, for freezing them during the first iterations."""
        return [layer.weight for layer in self.prototypes]


class SwAVModel(nn.Module):
    """Trunk + SwAV head over multi-crop batches.

    Crops of one resolution go through the trunk together (one call per resolution, as in
    SwAV): BatchNorm statistics are then per-resolution, and each call has a static shape.
    """

    def __init__(self, trunk: nn.Module, head: SwAVHead) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, groups: Sequence[Tensor] | Tensor) -> tuple[Tensor, list[Tensor]]:
        """`groups`: one ``[n_r*B,3,h,w]`` tensor per resolution, crop-major; a bare tensor is
        one group. Returns the head's ``(embedding, scores)`` with rows in the same order."""
        if isinstance(groups, Tensor):
            groups = [groups]
        features = torch.cat([self.trunk(g) for g in groups], dim=0)
        return self.head(features)


def build_swav_model(
    trunk: str,
    head_hidden: Sequence[int],
    head_out: int,
    head_batchnorm: bool,
    n_prototypes: int | Sequence[int],
) -> SwAVModel:
    """Trunk `trunk` (see ``TRUNK_NAMES``) with a SwAV head sized to its output width."""
    body = build_trunk(trunk)
    head = SwAVHead(body.out_features, head_hidden, head_out, head_batchnorm, n_prototypes)
    return SwAVModel(body, head)
