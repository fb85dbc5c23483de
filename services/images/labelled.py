"""`seer seed --labelled`: a small offline labelled set for the evaluator and the quality benchmark.

Nothing may be downloaded, yet the service must prove that its features get better. So the set
is generated, and made so that learning is *needed*: the class is the kind of one central object
of the shared vocabulary (`services.images.shapes`, whose docstring says why), everything else
random. A network then scores well only with shape-selective, colour-invariant features (the
README gives the raw-pixel kNN score): what SwAV's multi-crop and colour augmentations teach.
The images are never in the sample pool (`seer seed` draws other seeds).

Layout (what `services.labelled.load_labelled` reads): `OUT/train/<kind>/*.jpg` and
`OUT/val/<kind>/*.jpg`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from services.evaluator.progress import Progress
from services.images.sample import add_grain, colour_cast, colour_field
from services.images.shapes import OBJECT_KINDS, Colour, draw_object, random_colour

# Seeds of the labelled images live in their own stream, apart from `seer seed`'s pool.
_LABELLED_STREAM = 7_919


def _contrasting_colour(img: Image.Image, rng: np.random.Generator) -> Colour:
    """A random colour at least a little away from the backdrop's mean, so the object shows."""
    mean = np.asarray(img.resize((4, 4)), dtype=np.float32).reshape(-1, 3).mean(axis=0)
    for _ in range(21):
        colour = random_colour(rng)
        if np.abs(np.subtract(colour, mean)).sum() >= 120:
            break
    return colour


def paint_labelled(kind: str, side: int, rng: np.random.Generator) -> Image.Image:
    """One image of class `kind`: the object near the centre, everything else random."""
    img = colour_field(side, side, rng, max_grid=4)  # the sample pool's kind of backdrop
    draw = ImageDraw.Draw(img)
    # A few small distractors of random kinds, kept small so that the class object dominates.
    kinds = list(OBJECT_KINDS)
    for _ in range(int(rng.integers(0, 3))):
        draw_object(draw, kinds[int(rng.integers(0, len(kinds)))],
                    float(rng.uniform(0, side)), float(rng.uniform(0, side)),
                    side * float(rng.uniform(0.04, 0.09)), rng)
    radius = side * float(rng.uniform(0.22, 0.36))
    cx = side * float(rng.uniform(0.42, 0.58))
    cy = side * float(rng.uniform(0.42, 0.58))
    draw_object(draw, kind, cx, cy, radius, rng, colour=_contrasting_colour(img, rng))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
    return colour_cast(add_grain(img, rng, strength=0.25), rng)


def generate_labelled_images(out_dir: str | Path, *, train_per_class: int = 100,
                             val_per_class: int = 50, seed: int = 0, min_side: int = 96,
                             max_side: int = 160, progress: bool = True) -> dict[str, int]:
    """Writes the train and val splits; returns the number of images written per split.

    Deterministic in `seed`; every image has its own generator, so a split can be regenerated
    alone. JPEG at quality 90: what a labelled set on an object store would hold.
    """
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError("train_per_class and val_per_class must be >= 1")
    if not 16 <= min_side <= max_side:
        raise ValueError(f"need 16 <= min_side <= max_side, got {min_side}, {max_side}")
    out = Path(out_dir)
    kinds = list(OBJECT_KINDS)
    plan = [("train", train_per_class), ("val", val_per_class)]
    total = len(kinds) * (train_per_class + val_per_class)
    bar = Progress("labelled images", tty=True) if progress and total >= 200 else None
    written: dict[str, int] = {}
    for split_index, (split, per_class) in enumerate(plan):
        written[split] = 0
        for label, kind in enumerate(kinds):
            folder = out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([_LABELLED_STREAM, seed, split_index, label, i])
                side = int(rng.integers(min_side, max_side + 1))
                paint_labelled(kind, side, rng).save(folder / f"{kind}_{i:05d}.jpg", quality=90)
                written[split] += 1
                if bar is not None:
                    bar(sum(written.values()), total)
    return written
