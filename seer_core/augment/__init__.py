"""Multi-crop augmentation for SwAV/SEER: decode, crops, colour, batching.

The ingest stage calls `build_multicrop(...)` on encoded bytes and ships uint8 crops
(`collate_crops`); the trainer turns them into normalised floats on its device (`normalize`),
optionally with `BatchPhotometric`, and orders them for the loss (`crops_to_groups`).
"""

from .batching import collate_crops, crops_to_groups
from .colour import PhotometricParams
from .crops import MultiCrop, box_reduction, build_multicrop, sample_crop_box
from .decode import REJECT_REASONS, DecodedImage, ImageRejected, decode_image
from .photometric import IMAGENET_MEAN, IMAGENET_STD, BatchPhotometric, normalize
from .recipes import RECIPES, CropGroup, MultiCropRecipe, resolve_recipe

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "RECIPES", "REJECT_REASONS", "BatchPhotometric", "CropGroup",
    "DecodedImage", "ImageRejected", "MultiCrop", "MultiCropRecipe", "PhotometricParams",
    "box_reduction", "build_multicrop", "collate_crops", "crops_to_groups", "decode_image",
    "normalize", "resolve_recipe", "sample_crop_box"
]
