"""Multi-crop recipes: how many crops of which size and scale range each image yields.

A recipe is data, not code, so that the ingest actors, the trainer (which must know the batch
keys and the number of global crops for the SwAV loss) and the config all agree on one object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

# Names a config may use, mapped to PIL's resampling filters.
INTERPOLATIONS: dict[str, Image.Resampling] = {
    name: Image.Resampling[name.upper()]
    for name in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
}

OVERRIDE_KEYS: tuple[str, ...] = ("global_size", "local_size", "n_global", "n_local",
                                  "global_scale", "local_scale", "interpolation")


@dataclass(frozen=True)
class CropGroup:
    """`count` crops of `size`x`size` pixels, each covering a random `scale` fraction of the image.

    Validated on construction so that a bad config fails at start-up, not inside an actor.
    """

    count: int
    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"CropGroup.count must be an int >= 1, got {self.count!r}")
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"CropGroup.size must be an int >= 1, got {self.size!r}")
        lo, hi = (float(v) for v in self.scale)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"CropGroup.scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        rlo, rhi = (float(v) for v in self.ratio)
        if not 0.0 < rlo <= rhi:
            raise ValueError(f"CropGroup.ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"CropGroup.interpolation must be one of {sorted(INTERPOLATIONS)}, "
                             f"got {self.interpolation!r}")
        # Normalise to float tuples so equality and hashing do not depend on list/int inputs.
        object.__setattr__(self, "scale", (lo, hi))
        object.__setattr__(self, "ratio", (rlo, rhi))

    @property
    def key(self) -> str:
        """The batch key of this group's tensor on the wire."""
        return f"crops_{self.size}"

    @property
    def resample(self) -> Image.Resampling:
        return INTERPOLATIONS[self.interpolation]


@dataclass(frozen=True)
class MultiCropRecipe:
    """Crop groups in recipe order: global crops first (the SwAV loss assigns codes on them)."""

    groups: tuple[CropGroup, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        groups = tuple(self.groups)
        if not groups:
            raise ValueError("MultiCropRecipe needs at least one CropGroup")
        keys = [g.key for g in groups]
        if len(set(keys)) != len(keys):
            # One tensor per size on the wire: two groups of one size would collide.
            raise ValueError(f"crop groups must have distinct sizes, got keys {keys}")
        object.__setattr__(self, "groups", groups)

    @property
    def n_crops(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def n_global(self) -> int:
        return self.groups[0].count

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(g.key for g in self.groups)


RECIPES: dict[str, MultiCropRecipe] = {
    # SEER (Goyal et al. 2021): 2x224 + 4x96.
    "seer": MultiCropRecipe(
        (CropGroup(2, 224, (0.14, 1.0)), CropGroup(4, 96, (0.05, 0.14))), name="seer"
    ),
    # SwAV (Caron et al. 2020), its best ImageNet setting: 2x224 + 6x96.
    "swav": MultiCropRecipe(
        (CropGroup(2, 224, (0.14, 1.0)), CropGroup(6, 96, (0.05, 0.14))), name="swav"
    ),
    # SSLight-style: larger local crops, bicubic resampling.
    "sslight": MultiCropRecipe(
        (
            CropGroup(2, 224, (0.3, 1.0), interpolation="bicubic"),
            CropGroup(6, 128, (0.05, 0.3), interpolation="bicubic"),
        ),
        name="sslight",
    ),
}


def resolve_recipe(
    recipe: str | MultiCropRecipe = "seer", overrides: Mapping[str, Any] | None = None
) -> MultiCropRecipe:
    """A recipe by name (or as given) with the config's overrides applied.

    Overrides address the first group as "global" and every later group as "local"; `n_local=0`
    drops the local groups (SwAV without multi-crop).
    """
    if isinstance(recipe, str) and recipe not in RECIPES:
        raise ValueError(f"unknown multi-crop recipe {recipe!r}; known: {sorted(RECIPES)}")
    base = RECIPES[recipe] if isinstance(recipe, str) else recipe
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise ValueError(f"unknown multi-crop override(s) {unknown}; allowed keys: "
                         f"{list(OVERRIDE_KEYS)}")
    if not overrides:
        return base

    def pick(group: CropGroup, prefix: str) -> CropGroup:
        fields = {f"{prefix}_size": "size", f"n_{prefix}": "count", f"{prefix}_scale": "scale",
                  "interpolation": "interpolation"}  # CropGroup makes a scale a float tuple
        changes = {field: overrides[key] for key, field in fields.items() if key in overrides}
        try:
            return dataclasses.replace(group, **changes)
        except ValueError as exc:
            raise ValueError(f"invalid multi-crop override for the {prefix} crops: {exc}") from exc

    n_local = overrides.get("n_local")  # a negative count is CropGroup's to refuse
    groups = [pick(base.groups[0], "global")]
    if n_local != 0:
        local_keys = {"local_size", "local_scale", "n_local"} & set(overrides)
        if len(base.groups) == 1 and local_keys:
            raise ValueError(f"recipe {base.name!r} has no local crops for {sorted(local_keys)}")
        groups += [pick(g, "local") for g in base.groups[1:]]
    return MultiCropRecipe(tuple(groups), name=base.name)
