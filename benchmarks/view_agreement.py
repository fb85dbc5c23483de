"""Can SwAV start learning on these images? How much two augmented views agree at random init.

    python benchmarks/view_agreement.py                           # runs/sample-images, resnet18
    python benchmarks/view_agreement.py --pool runs/quality/pool --trunk regnety_400mf --size 96

SwAV learns by making one view predict the cluster of another. At step 0 the only signal is
what a randomly initialised trunk already finds common to two views of one image; when two views
of the same image are no more alike than two different images, the cheapest way down the loss
is to make every prediction uniform, and the run sits at ln K (the collapse that
`benchmarks/quality.py` shows). This prints, per photometric setting, the mean cosine between
the pooled features of two global views of the same image ("pos"), between different images
("neg"), their gap, and how often a view's nearest neighbour among the other views is its own
image (retrieval; chance is 1/N). Random init, BatchNorm in training mode, as at step 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
import torch.nn.functional as F
from helpers import load_images

from seer_core.augment import (
    MultiCrop,
    PhotometricParams,
    collate_crops,
    crops_to_groups,
    normalize,
    resolve_recipe,
)
from seer_core.models import build_trunk

SETTINGS: dict[str, PhotometricParams | None] = {
    "none (crops and flips only)": None,
    "SwAV/SEER colour + grey + blur": PhotometricParams(),
    "blur only": PhotometricParams(0.0, 0.0, 0.0, 0.0, p_grayscale=0.0, p_blur=0.5),
    "grayscale only (p 0.2)": PhotometricParams(0.0, 0.0, 0.0, 0.0, p_grayscale=0.2, p_blur=0.0),
    "hue only (0.2)": PhotometricParams(0.0, 0.0, 0.0, 0.2, p_grayscale=0.0, p_blur=0.0),
    "brightness+contrast 0.4": PhotometricParams(0.4, 0.4, 0.0, 0.0, p_grayscale=0.0,
                                                 p_blur=0.0),
    "SimCLR strength 0.5": PhotometricParams(0.4, 0.4, 0.4, 0.1),
}


def agreement(trunk: torch.nn.Module, images: list[bytes], multicrop: MultiCrop
              ) -> tuple[float, float, float]:
    batch = collate_crops([multicrop(data) for data in images], multicrop.recipe)
    views = crops_to_groups(batch, multicrop.recipe)[0]
    n = len(images)
    with torch.no_grad():
        features = F.normalize(trunk(normalize(views)).float(), dim=1)
    a, b = features[:n], features[n:]
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    neg = float((a @ a.T)[off_diagonal].mean())
    pos = float((a * b).sum(dim=1).mean())
    retrieval = float(((b @ a.T).argmax(dim=1) == torch.arange(n)).float().mean())
    return pos, neg, retrieval


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="runs/sample-images", help="a folder of images")
    parser.add_argument("--trunk", default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="global crop side")
    parser.add_argument("--scale", type=float, nargs=2, default=(0.14, 1.0),
                        metavar=("MIN", "MAX"), help="global crop scale range")
    parser.add_argument("--n", type=int, default=256, help="images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images = [data for _, data in load_images(args.pool, args.n)]
    if len(images) < 8:
        parser.error(f"{args.pool}: need at least 8 images (try `seer seed`)")
    recipe = resolve_recipe("seer", {"global_size": args.size, "n_local": 0,
                                     "global_scale": tuple(args.scale)})
    print(f"{len(images)} images from {args.pool}, {args.trunk} at random init, 2 global views "
          f"of {args.size} px, scale {tuple(args.scale)}; retrieval chance {1 / len(images):.3f}")
    print(f"{'photometric setting':34s} {'pos':>6} {'neg':>6} {'gap':>6} {'retrieval':>9}")
    for name, params in SETTINGS.items():
        torch.manual_seed(args.seed)
        trunk = build_trunk(args.trunk).train()
        multicrop = MultiCrop(recipe, seed=args.seed, photometric=params is not None,
                              params=params)
        pos, neg, retrieval = agreement(trunk, images, multicrop)
        print(f"{name:34s} {pos:6.3f} {neg:6.3f} {pos - neg:6.3f} {retrieval:9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
