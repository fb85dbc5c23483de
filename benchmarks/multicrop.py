"""Multi-crop throughput per core: seer's `build_multicrop` against the plain torchvision way.

Prints images per second per core for both pipelines on the same images, and their ratio. One
process, one thread (`torch.set_num_threads(1)`): the ingest actors scale by processes, so per-core
speed is what decides how many CPUs feed a GPU. Rates are given per CPU-second (robust when other
work shares the machine) and per wall-second.

    python benchmarks/multicrop.py                      # 64 generated 1080-px photos, seer
    python benchmarks/multicrop.py --images DIR --recipe swav --seconds 10
    python benchmarks/multicrop.py --floor              # + what decode/resize/blur alone allow
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageFilter
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import load_images

from seer_core.augment import IMAGENET_MEAN, IMAGENET_STD, RECIPES, build_multicrop
from seer_core.augment.crops import REDUCING_GAP, MultiCrop


class _PILRandomGaussianBlur:
    """SwAV's blur: PIL GaussianBlur with radius ~ U(0.1, 2), probability 0.5."""

    def __init__(self, p: float = 0.5, radius: tuple[float, float] = (0.1, 2.0)) -> None:
        self.p, self.radius = p, radius

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.radius)))


def reference_pipeline(recipe_name: str) -> Callable[[bytes], list[torch.Tensor]]:
    """Multi-crop as SwAV/VISSL write it: full decode, then a torchvision chain per crop."""
    recipe = RECIPES[recipe_name]
    per_group = []
    for g in recipe.groups:
        interp = transforms.InterpolationMode(g.interpolation)
        chain = transforms.Compose([
            transforms.RandomResizedCrop(g.size, scale=g.scale, ratio=g.ratio,
                                         interpolation=interp),
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([transforms.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            _PILRandomGaussianBlur(),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ])
        per_group.append((g.count, chain))

    def run(data: bytes) -> list[torch.Tensor]:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        return [chain(img) for count, chain in per_group for _ in range(count)]

    return run


def primitives_floor(mc: MultiCrop, stages: int) -> Callable[[bytes], None]:
    """Only the steps no implementation built on PIL/libjpeg can skip, as `mc` does them.

    stages 1: decode (reduced as `mc` decides); 2: + resize every crop; 3: + PIL's Gaussian
    blur on the crops whose draw blurs (the reference's own blur op, same draws). Its rate
    bounds what any CPU pipeline using these primitives can reach: the colour jitter, tensor
    copies and Python around them only add to it.
    """

    def run(data: bytes) -> None:
        decoded, plan = mc.decode_and_plan(data)
        if stages < 2:
            return
        for group, box, _flip, draw in plan:
            crop = decoded.image.resize((group.size, group.size), group.resample,
                                        box=decoded.map_box(*box), reducing_gap=REDUCING_GAP)
            if stages >= 3 and draw is not None and draw[3] is not None:
                crop.filter(ImageFilter.GaussianBlur(radius=draw[3]))

    return run


def measure(
    fn: Callable[[bytes], object], images: list[bytes], seconds: float
) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second), over whole passes through `images`.

    Whole passes, so that every pipeline is timed on the same mix of images in every round.
    """
    fn(images[0])  # warm-up: lazy imports, plugin registration
    n = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while True:
        fn(images[n % len(images)])
        n += 1
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if wall >= seconds and n % len(images) == 0:
            return n / max(cpu, 1e-9), n / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None,
                        help="directory of images (default: generate --n 1080-px photos)")
    parser.add_argument("--n", type=int, default=64, help="images to generate/use (default 64)")
    parser.add_argument("--recipe", default="seer", choices=sorted(RECIPES))
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="measuring time per pipeline, over all rounds (default 6)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="interleaved rounds; figures are medians over them (default 6)")
    parser.add_argument("--floor", action="store_true",
                        help="also time decode, resize and blur alone: the bound on the speed-up")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    random.seed(0)
    torch.manual_seed(0)
    images = [data for _, data in load_images(args.images, args.n)]
    sizes = {Image.open(io.BytesIO(b)).size for b in images[:8]}
    print(f"{len(images)} images (e.g. {sorted(sizes)[:3]}), recipe {args.recipe}, "
          f"PIL {Image.__version__}, 1 thread, {args.seconds:.0f} s each in {args.rounds} rounds")

    probe = build_multicrop(args.recipe, seed=1)
    reductions = [probe.decode_and_plan(b)[0].reduction for b in images for _ in range(4)]
    shares = ", ".join(f"1/{k}: {reductions.count(k) / len(reductions):.0%}"
                       for k in sorted(set(reductions)))
    print(f"JPEG decode scale chosen from each image's crop boxes: {shares}")

    pipelines: dict[str, Callable[[bytes], object]] = {
        "seer build_multicrop": build_multicrop(args.recipe, seed=0),
        "  photometric=False (on device)": build_multicrop(args.recipe, seed=0,
                                                           photometric=False),
        "torchvision reference": reference_pipeline(args.recipe),
    }
    if args.floor:
        for stages, name in ((1, "decode"), (2, "+ resize every crop"), (3, "+ Gaussian blur")):
            pipelines[f"  floor: {name}"] = primitives_floor(
                build_multicrop(args.recipe, seed=0), stages)
    # Interleaved rounds, paired ratios: the machine's speed drifts (other tenants, turbo), and
    # a ratio of two rates measured minutes apart carries that drift; one round does not.
    cpu_rates: dict[str, list[float]] = {name: [] for name in pipelines}
    wall_rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(args.rounds):
        for name, fn in pipelines.items():
            cpu, wall = measure(fn, images, args.seconds / args.rounds)
            cpu_rates[name].append(cpu)
            wall_rates[name].append(wall)
    ref = cpu_rates["torchvision reference"]

    def ratio(name: str) -> float:
        return statistics.median(c / r for c, r in zip(cpu_rates[name], ref))

    for name in pipelines:
        if name.startswith("  floor") and name.endswith("decode"):
            print("floor: the unavoidable PIL/libjpeg steps alone, as seer does them "
                  "(no CPU pipeline built on them can be faster)")
        cpu = statistics.median(cpu_rates[name])
        print(f"{name:32s}: {cpu:7.1f} img/s per core = {1e3 / cpu:5.2f} ms/image "
              f"({statistics.median(wall_rates[name]):.1f} wall), {ratio(name):.2f}x the reference")
    spread = [c / r for c, r in zip(cpu_rates["seer build_multicrop"], ref)]
    print(f"{'speed-up':32s}: {ratio('seer build_multicrop'):7.2f}x per core "
          f"(rounds {min(spread):.2f}-{max(spread):.2f}); "
          f"photometric=False {ratio('  photometric=False (on device)'):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
