"""What the benchmark scripts share: the repository on ``sys.path``, their images.

Each script puts its own folder on ``sys.path`` and imports ``helpers`` (under ``runpy``, as
the tests run them, the script's folder is not on the path by itself).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load_images(folder: str | Path | None, n: int, side: int = 1080) -> list[tuple[str, bytes]]:
    """(name, bytes) of the first `n` images under `folder` (sorted), or of `n` freshly
    generated ~`side`-px photo-like JPEGs when `folder` is None; exits when there are none."""
    from services.feed import DEFAULT_IMAGE_EXTENSIONS
    from services.images.sample import generate_photo_like_jpegs

    if folder is None:
        tmp = tempfile.mkdtemp(prefix="seer-bench-")
        try:
            return [(p.name, p.read_bytes())
                    for p in generate_photo_like_jpegs(tmp, n, side=side, seed=0)]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    paths = sorted(p for p in Path(folder).rglob("*")
                   if p.is_file() and p.suffix.lower() in DEFAULT_IMAGE_EXTENSIONS)
    if not paths:
        raise SystemExit(f"no images ({', '.join(DEFAULT_IMAGE_EXTENSIONS)}) under {folder}")
    return [(p.name, p.read_bytes()) for p in paths[:n]]
