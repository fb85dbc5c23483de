"""The standard evaluation transform: resize the shorter side, centre crop, keep uint8.

Every published linear/kNN number (SwAV, SEER, DINO) uses ``Resize(256) + CenterCrop(224)`` on
the PIL image: evaluating with anything else makes our numbers incomparable. The result stays
uint8 (4x smaller than float) because labelled sets are held in memory whole; normalisation
happens per batch on the device in ``extract_features``.
"""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from seer_core.evaluation.checks import EvalError

# The crop covers 87.5% of the resized side (224 / 256), as in the reference recipes.
CROP_RATIO = 0.875


def preprocess(img: Image.Image, size: int = 224, resize: int | None = None) -> torch.Tensor:
    """RGB uint8 ``[3,size,size]``: shorter side to `resize` (default ``round(size / 0.875)``),
    then the centre ``size x size`` crop.

    Resizing is PIL's bilinear filter with antialiasing (what torchvision's ``Resize`` does on a
    PIL image). Non-RGB modes (L, RGBA, P, CMYK) are converted to RGB. EXIF orientation is the
    caller's job (``ImageOps.exif_transpose``), because only the caller knows whether the image
    came from a file that carries it.
    """
    if size < 1:
        raise EvalError(f"preprocess: size must be >= 1, got {size}")
    target = round(size / CROP_RATIO) if resize is None else resize
    if target < size:
        raise EvalError(f"preprocess: resize ({target}) must be >= size ({size})")
    if img.width < 1 or img.height < 1:
        raise EvalError(f"preprocess: empty image {img.width}x{img.height}")
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = TF.resize(img, target, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    img = TF.center_crop(img, [size, size])
    return TF.pil_to_tensor(img).contiguous()
