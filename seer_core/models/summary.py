"""Model sizes: parameters, GFLOPs, and the table ``seer models`` prints.

Everything here works on the meta device, so sizing RegNetY-256GF (1.3B parameters, ~5 GB of
float32) costs no memory and well under a second.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seer_core.models.head import (
    SEER_HEAD_HIDDEN,
    SEER_HEAD_OUT,
    SEER_PROTOTYPES,
    SwAVHead,
    SwAVModel,
)
from seer_core.models.trunks import SEER_REGNETS, TRUNK_NAMES, build_trunk


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every sub-module in eval mode, then restore each one's own flag on exit.

    Per-module restore (not ``model.train(prev)``) because a model may be in a mixed state, e.g.
    a trunk with frozen BatchNorms in a train-mode network.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (shared ones once), trainable or not."""
    return sum(p.numel() for p in module.parameters())


def estimate_gflops(module: nn.Module, resolution: int = 224) -> float:
    """Multiply-adds / 1e9 for one ``resolution``² image: the RegNet papers' "GF".

    FlopCounterMode counts 2 FLOPs per multiply-add of convolutions and matmuls (grouped convs
    included, elementwise ops, BN and pooling not, as in pycls), hence the halving. The module
    runs in eval mode for the count (training flags restored), so real BN statistics are not
    touched; on the meta device nothing is computed at all.
    """
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.empty(1, 3, resolution, resolution, device=device)
    with torch.no_grad(), eval_mode(module), FlopCounterMode(display=False) as counter:
        module([x] if isinstance(module, SwAVModel) else x)
    return counter.get_total_flops() / 2e9


def _fmt_params(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}K"


def model_table(names: Sequence[str] = TRUNK_NAMES) -> str:
    """Aligned text table: name, trunk parameters, with SEER head (SEER trunks only), output
    width, GFLOPs at 224 px. Built on the meta device."""
    header = ("trunk", "params", "+SEER head", "out width", "GFLOPs@224")
    rows: list[tuple[str, ...]] = [header]
    with torch.device("meta"):
        for name in names:
            trunk = build_trunk(name)
            n = count_parameters(trunk)
            with_head = "-"
            if name in SEER_REGNETS:
                head = SwAVHead(
                    trunk.out_features, SEER_HEAD_HIDDEN, SEER_HEAD_OUT, False, SEER_PROTOTYPES
                )
                with_head = _fmt_params(n + count_parameters(head))
            gf = estimate_gflops(trunk, 224)
            rows.append((name, _fmt_params(n), with_head, str(trunk.out_features), f"{gf:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join([r[0].ljust(widths[0]), *map(str.rjust, r[1:], widths[1:])])
                     for r in rows)
