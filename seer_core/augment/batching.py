"""The wire format of multi-crop batches, and the crop order the SwAV loss expects.

One uint8 tensor per crop group, `[B, count, 3, size, size]`: sample-major, because that is how
the ingest actors assemble a batch (an image's crops arrive together) and because slicing a
batch along B keeps every image's crops together. The loss wants crop-major instead (view 0 of
every image, then view 1, ...), which `crops_to_groups` produces as one transpose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .recipes import MultiCropRecipe


def collate_crops(
    samples: Sequence[Sequence[torch.Tensor]], recipe: MultiCropRecipe
) -> dict[str, torch.Tensor]:
    """Stack per-image crop lists (recipe order) into `{key: uint8 [B, count, 3, s, s]}`."""
    if not samples:
        raise ValueError("collate_crops needs at least one sample")
    batch = len(samples)
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for group in recipe.groups:
        dst = torch.empty((batch, group.count, 3, group.size, group.size), dtype=torch.uint8)
        for b, crops in enumerate(samples):
            if len(crops) != recipe.n_crops:
                raise ValueError(f"sample {b} has {len(crops)} crops, recipe {recipe.name!r} makes "
                                 f"{recipe.n_crops}")
            for c in range(group.count):
                crop = crops[offset + c]
                if tuple(crop.shape) != (3, group.size, group.size) or crop.dtype != torch.uint8:
                    raise ValueError(f"sample {b} crop {offset + c}: expected uint8 [3, "
                                     f"{group.size}, {group.size}], got {crop.dtype} "
                                     f"{list(crop.shape)}")
                dst[b, c] = crop
        out[group.key] = dst
        offset += group.count
    return out


def crops_to_groups(
    batch: Mapping[str, torch.Tensor | np.ndarray], recipe: MultiCropRecipe
) -> list[torch.Tensor]:
    """Each group as `[count * B, 3, s, s]`, crop-major: crop 0 of every image, then crop 1...

    Accepts the numpy arrays that come through Ray as well as tensors (no copy for either
    until the reshape, which copies once because the transpose is not contiguous).
    """
    groups = []
    for group in recipe.groups:
        if group.key not in batch:
            raise KeyError(f"batch has no {group.key!r}; keys: {sorted(batch)}")
        x = torch.as_tensor(batch[group.key])
        if x.dim() != 5 or tuple(x.shape[1:]) != (group.count, 3, group.size, group.size):
            raise ValueError(f"{group.key}: expected [B, {group.count}, 3, {group.size}, "
                             f"{group.size}], got {list(x.shape)}")
        groups.append(x.transpose(0, 1).reshape(-1, 3, group.size, group.size))
    return groups
