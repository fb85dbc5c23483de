"""A labelled set and an unlabelled pool made of real images that Debian packages install.

The generated set (`services.images.labelled`) is drawn by the same code that draws the sample
pool, and the `local` preset was tuned on it; a recipe that only learns there is not known to
learn anywhere. Nothing may be downloaded at run time, so the real images come from packages:

* `tuxpaint-stamps-default`: ~800 clip-art drawings (PNG with alpha) by many artists, sorted into
  folders by subject (`animals/birds`, `food/fruit`, `town/houses`, ...). The labelled classes
  are eight of those folders (`CLASSES`); every other stamp feeds the pool.
* `mate-backgrounds`: ~30 photographs and abstract wallpapers (JPEG/PNG). A share of the
  drawings (`photo_share`, a quarter by default) is pasted on a crop of one of them, the rest on
  a plain light background, the way clip art usually comes.
  (`gnome-backgrounds` ships WebP and SVG only, which the project's Pillow build does not
  decode; its readable files, if any, are used too.)

Why only a share on photos: with a photo behind every drawing the backdrop dominated the pixels
and nothing separated the classes (raw pixels, a random trunk and trained checkpoints all within
the evaluation's noise of each other): a benchmark on which nothing moves cannot show a gain.

Why the set cannot leak into the pool: the labelled images and the pool images are rendered
from disjoint sets of stamp files (different folders, and any pool stamp whose bytes equal a
labelled stamp's is dropped), and train and val are split by *stamp group* (a stamp and its
variants, `pig.png` / `pig_golden2.png`, stay on one side), so a val drawing is never seen in
train or in the pool, whatever the backdrop. Each folder gets a `.sources.json` manifest (a
hidden file: the feed and the labelled loader ignore it) naming the stamp files and their
SHA-256, which the tests check for disjointness.

Layout: `LABELLED/train/<class>/*.jpg`, `LABELLED/val/<class>/*.jpg` (what `seer eval --data`
reads) and `POOL/real_*.jpg` (what `feed.uri` reads). Deterministic in `seed`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import shutil
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")
BACKDROPS_ROOT = Path("/usr/share/backgrounds")
#: What the real set needs installed; `MissingPackagesError` names the command.
PACKAGES: tuple[str, ...] = ("tuxpaint-stamps-default", "mate-backgrounds")
INSTALL_COMMAND = "apt-get install -y " + " ".join(PACKAGES)
#: Labelled classes: class name -> stamp folders (relative to STAMPS_ROOT). Eight subjects with
#: 20-67 stamps each in tuxpaint-stamps-default 2023.x; every other stamp goes to the pool.
CLASSES: dict[str, tuple[str, ...]] = {
    "bird": ("animals/birds",),
    "mammal": ("animals/mammals",),
    "insect": ("animals/insects",),
    "fruit": ("food/fruit",),
    "flower": ("plants/flowers",),
    "house": ("town/houses",),
    "roadsign": ("town/roadsigns",),
    "money": ("symbols/money",),
}
MANIFEST = ".sources.json"
_BACKDROP_EXTENSIONS = (".jpg", ".jpeg", ".png")
_STAMP_MAX_SIDE = 256  # larger than any rendered side
_BACKDROP_MAX_SIDE = 768  # backdrops are 4K photos: decoded once, reduced, then cropped


class MissingPackagesError(RuntimeError):
    """The packages that hold the real images are not installed; the message says how."""


@dataclass
class RealSets:
    """What `write_real_sets` wrote: counts per split and class, and the stamp files used."""

    classes: list[str]
    train: dict[str, int] = field(default_factory=dict)
    val: dict[str, int] = field(default_factory=dict)
    pool: int = 0
    labelled_stamps: int = 0
    pool_stamps: int = 0

    def describe(self) -> str:
        return (f"real drawings (tuxpaint stamps, a share on mate backdrops): "
                f"{len(self.classes)} classes, "
                f"{sum(self.train.values())} train / {sum(self.val.values())} val images from "
                f"{self.labelled_stamps} stamps; pool {self.pool} images from "
                f"{self.pool_stamps} other stamps")


def check_sources(stamps_root: Path = STAMPS_ROOT, backdrops_root: Path = BACKDROPS_ROOT,
                  classes: Mapping[str, tuple[str, ...]] = CLASSES) -> None:
    """Raises MissingPackagesError, with the apt-get command to run, when the stamps of a
    labelled class or any readable backdrop are missing. Never installs anything itself."""
    missing = [f"{stamps_root / d}" for folders in classes.values() for d in folders
               if not any((stamps_root / d).rglob("*.png"))]
    if not _backdrop_files(backdrops_root):
        missing.append(f"{backdrops_root}/**/*.jpg|png")
    if missing:
        raise MissingPackagesError(
            f"the real image set needs the Debian packages {', '.join(PACKAGES)} (not found: "
            f"{', '.join(missing)}); install them with:\n    sudo {INSTALL_COMMAND}\n"
            "(or `--data generated` for the generated set, which needs nothing)")


def _backdrop_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in _BACKDROP_EXTENSIONS
                  and p.is_file())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _group(path: Path) -> str:
    """A stamp and its variants share a group: `pig_golden2.png` -> `<folder>/pig`."""
    stem = re.split(r"[_\-\s]", path.stem.lower(), maxsplit=1)[0].rstrip("0123456789")
    return f"{path.parent}/{stem or path.stem.lower()}"


def _stamps(root: Path, folder: str) -> list[Path]:
    return sorted(p for p in (root / folder).rglob("*.png") if p.is_file())


def _load_backdrop(path: Path) -> Image.Image | None:
    """Decoded at a reduced size (backdrops are 4K photos), or None when it does not decode."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (_BACKDROP_MAX_SIDE, _BACKDROP_MAX_SIDE))  # JPEG: cheap decode
            img = img.convert("RGB")
            img.thumbnail((_BACKDROP_MAX_SIDE, _BACKDROP_MAX_SIDE))
            return img
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class _Backdrops:
    """Readable backdrop images, decoded lazily, once each (the cache goes with the object)."""

    def __init__(self, root: Path) -> None:
        self.files = _backdrop_files(root)
        self.load = functools.cache(_load_backdrop)

    def crop(self, side: int, rng: random.Random) -> Image.Image:
        """A random square crop of a random backdrop, resized to `side` (flat grey if none
        of them decodes)."""
        for _ in range(len(self.files)):
            img = self.load(self.files[rng.randrange(len(self.files))])
            if img is not None:
                break
        else:
            return Image.new("RGB", (side, side), (128, 128, 128))
        short = min(img.size)
        size = max(16, int(short * rng.uniform(0.3, 1.0)))
        x = rng.randint(0, img.width - size)
        y = rng.randint(0, img.height - size)
        return img.crop((x, y, x + size, y + size)).resize((side, side),
                                                          Image.Resampling.BILINEAR)


def _load_stamp(path: Path) -> Image.Image:
    with Image.open(path) as img:
        stamp = img.convert("RGBA")
    box = stamp.getchannel("A").getbbox()  # trim the transparent margin
    stamp = stamp.crop(box) if box else stamp
    stamp.thumbnail((_STAMP_MAX_SIDE, _STAMP_MAX_SIDE))  # ~500 pool stamps stay in memory
    return stamp


def render(stamps: list[Image.Image], backdrops: _Backdrops, side: int,
           rng: random.Random, photo_share: float) -> Image.Image:
    """The first stamp large near the centre (the subject), any others smaller around it, on a
    random backdrop crop (with probability `photo_share`) or a plain light background of a
    random tone; random scale, position and mirror."""
    if rng.random() < photo_share:
        img = backdrops.crop(side, rng)
    else:
        tone = rng.randint(215, 255)
        img = Image.new("RGB", (side, side), tuple(min(255, tone + rng.randint(-12, 12))
                                                    for _ in range(3)))
    for i, stamp in enumerate(stamps):
        frac = rng.uniform(0.5, 0.85) if i == 0 else rng.uniform(0.2, 0.45)
        scale = frac * side / max(stamp.size)
        w, h = max(1, round(stamp.width * scale)), max(1, round(stamp.height * scale))
        piece = stamp.resize((w, h), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            piece = piece.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if i == 0:
            x = (side - w) // 2 + rng.randint(-side // 10, side // 10)
            y = (side - h) // 2 + rng.randint(-side // 10, side // 10)
        else:
            x, y = rng.randint(-w // 3, side - 2 * w // 3), rng.randint(-h // 3, side - 2 * h // 3)
        img.paste(piece, (x, y), piece)
    return img


def _manifest(out: Path, kind: str, stamps: dict[str, str], extra: dict[str, object]) -> None:
    (out / MANIFEST).write_text(json.dumps({"kind": kind, "stamps": stamps, **extra},
                                           indent=1, sort_keys=True))


def write_real_sets(pool_dir: str | Path, labelled_dir: str | Path, *, pool_count: int = 4000,
                    train_views: int = 4, val_views: int = 4, val_fraction: float = 0.34,
                    photo_share: float = 0.25,
                    seed: int = 0, labelled_side: int = 128, pool_side: int = 192,
                    max_stamps_per_class: int | None = None,
                    classes: Mapping[str, tuple[str, ...]] = CLASSES,
                    stamps_root: Path = STAMPS_ROOT, backdrops_root: Path = BACKDROPS_ROOT,
                    ) -> RealSets:
    """Writes the labelled set (train/val split by stamp group, `train_views` / `val_views`
    renderings of each stamp) and `pool_count` pool images (one to three pool stamps each).

    `max_stamps_per_class` keeps the first groups of each class only (tiny sets for tests).
    Raises MissingPackagesError when the packages are not installed, ValueError on bad sizes.
    """
    if min(train_views, val_views, pool_count) < 1 or not 0 < val_fraction < 1:
        raise ValueError("train_views, val_views and pool_count must be >= 1, "
                         "val_fraction in (0, 1)")
    if not 0 <= photo_share <= 1:
        raise ValueError(f"photo_share must be in [0, 1], got {photo_share}")
    check_sources(stamps_root, backdrops_root, classes)
    pool_out, labelled_out = Path(pool_dir), Path(labelled_dir)
    for out in (pool_out, labelled_out):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    backdrops = _Backdrops(backdrops_root)
    sets = RealSets(classes=list(classes))

    labelled_digests: dict[str, str] = {}
    split_of: dict[str, dict[str, str]] = {}
    for label, (name, folders) in enumerate(classes.items()):
        groups: dict[str, list[Path]] = defaultdict(list)
        for folder in folders:
            for path in _stamps(stamps_root, folder):
                groups[_group(path.relative_to(stamps_root))].append(path)
        keys = sorted(groups)
        random.Random(f"{seed}:split:{name}").shuffle(keys)
        if max_stamps_per_class is not None:
            keys = keys[:max(2, max_stamps_per_class)]
        n_val = min(len(keys) - 1, max(1, round(len(keys) * val_fraction)))
        if n_val < 1:
            raise MissingPackagesError(f"class {name}: fewer than 2 stamp groups in {folders}")
        for split, group_keys, views in (("val", keys[:n_val], val_views),
                                         ("train", keys[n_val:], train_views)):
            folder_out = labelled_out / split / name
            folder_out.mkdir(parents=True, exist_ok=True)
            count = 0
            for key in sorted(group_keys):
                for path in groups[key]:
                    rel = str(path.relative_to(stamps_root))
                    labelled_digests[rel] = _digest(path)
                    split_of.setdefault(split, {})[rel] = name
                    stamp = _load_stamp(path)
                    for v in range(views):
                        rng = random.Random(f"{seed}:{split}:{rel}:{v}")
                        render([stamp], backdrops, labelled_side, rng, photo_share).save(
                            folder_out / f"{Path(rel).stem}_{label}_{count:04d}.jpg", quality=90)
                        count += 1
            getattr(sets, split)[name] = count
    sets.labelled_stamps = len(labelled_digests)
    _manifest(labelled_out, "labelled", labelled_digests,
              {"splits": split_of, "seed": seed, "packages": list(PACKAGES)})

    taken = {d for folders in classes.values() for d in folders}
    seen = set(labelled_digests.values())
    pool_paths: dict[str, Path] = {}
    pool_digests: dict[str, str] = {}
    for path in _stamps(stamps_root, "."):
        rel = str(path.relative_to(stamps_root))
        if any(rel == d or rel.startswith(f"{d}/") for d in taken):
            continue
        digest = _digest(path)
        if digest in seen:  # the same drawing filed twice: never in both sets
            continue
        seen.add(digest)
        pool_paths[rel], pool_digests[rel] = path, digest
    if not pool_paths:
        raise MissingPackagesError(f"no pool stamps left in {stamps_root}; reinstall with:\n"
                                   f"    sudo {INSTALL_COMMAND}")
    names = sorted(pool_paths)
    load_stamp = functools.cache(_load_stamp)
    for i in range(pool_count):
        rng = random.Random(f"{seed}:pool:{i}")
        picked = [names[rng.randrange(len(names))] for _ in range(rng.randint(1, 3))]
        stamps = [load_stamp(pool_paths[n]) for n in picked]
        render(stamps, backdrops, pool_side, rng, photo_share).save(
            pool_out / f"real_{i:06d}.jpg", quality=90)
    sets.pool, sets.pool_stamps = pool_count, len(pool_digests)
    _manifest(pool_out, "pool", pool_digests, {"seed": seed, "packages": list(PACKAGES)})
    return sets
