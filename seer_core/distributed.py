"""Where this process stands in torch.distributed: the one rank/world helper of seer_core and
services (a laptop run, the CPU tests and a tool have no process group: rank 0 of 1)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def rank_and_world(group: Any | None = None) -> tuple[int, int]:
    """(rank, world size) in `group` (default: every process); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1
