"""SyncBatchNorm in groups of consecutive ranks.

With 16 images per GPU, per-GPU BatchNorm statistics are noisy; syncing across all 512 GPUs
costs an all-reduce per BN layer over the whole job. SEER syncs within groups of 64 GPUs: stable
statistics, bounded communication. Groups are consecutive ranks so that (with ranks laid out
node by node) most of a group's traffic stays inside nodes.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

from seer_core.distributed import rank_and_world


def sync_groups(world_size: int, group_size: int) -> list[list[int]]:
    """Consecutive-rank groups; the last one is smaller when `group_size` does not divide the
    world. ``group_size <= 0`` (or >= world size) means a single group of all ranks."""
    if group_size <= 0 or group_size >= world_size:
        return [list(range(world_size))]
    return [
        list(range(s, min(s + group_size, world_size))) for s in range(0, world_size, group_size)
    ]


def convert_sync_batchnorm(model: nn.Module, group_size: int) -> nn.Module:
    """Replace every BatchNorm in `model` by SyncBatchNorm over this rank's group.

    Returns `model` itself, unchanged, when torch.distributed is not initialised or the world
    has one rank (a laptop run, the CPU tests). Otherwise it must be called on every rank, in
    the same order: ``new_group`` is collective, so each rank creates every group, not only its
    own.
    """
    rank, world = rank_and_world()
    if world == 1:
        return model
    groups = sync_groups(world, group_size)
    if len(groups) == 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=None)
    mine = None
    for ranks in groups:
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = group
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=mine)
