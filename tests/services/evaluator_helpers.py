"""Tiny real inputs for the evaluator tests: a labelled folder, a config, real checkpoints.

4 classes x (6 train + 2 val) images of 32 px, each class a colour with seeded noise, so a
random tiny trunk already separates them a little and every protocol runs in well under a
second on a CPU.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from PIL import Image

from seer_core.checkpoint import COMMIT_FILE, COMMIT_FORMAT, save_state, step_dir_name
from seer_core.config import SeerConfig, load_config
from seer_core.models import build_swav_model
from services.storage import META_FILE

COLOURS = ((220, 40, 40), (40, 200, 60), (40, 70, 220), (230, 210, 40))
CLASSES = ("apple", "grass", "sea", "sun")


def make_labelled(root: Path, train: int = 6, val: int = 2, size: int = 32) -> Path:
    """`root/train/<class>/*.png` + `root/val/<class>/*.png`."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name, colour in zip(CLASSES, COLOURS):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.integers(-60, 60, size=(size, size, 3))
                pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def tiny_overrides(storage: Path, data: Path, run: str = "r1") -> list[str]:
    return ["model.trunk=tiny", "model.head_hidden=[16]", "model.head_out=8",
            "model.prototypes=8", f"checkpoint.storage={storage}", f"checkpoint.run_name={run}",
            f"eval.data={data}", "eval.image_size=32", "eval.knn_k=[5, 20]",
            "eval.protocols=[knn]", "eval.probe_epochs=5", "eval.batch_size=16",
            "eval.device=cpu", "eval.metrics_port=0", "eval.interval_s=0.01"]


def tiny_config(storage: Path, data: Path, *extra: str, run: str = "r1") -> SeerConfig:
    return load_config("local", [*tiny_overrides(storage, data, run), *extra])


def write_checkpoint(cfg: SeerConfig, step: int, images_seen: int | None = None,
                     trunk: str | None = None) -> Path:
    """A real checkpoint in the trainer's layout, as far as the evaluator reads it:
    `<storage>/<run>/step_N/{state.pt,meta.json,commit.json}`.

    `trunk` builds the weights of another architecture while the saved config keeps the
    configured one (a checkpoint that does not fit its own config)."""
    images_seen = step * 16 if images_seen is None else images_seen
    m = cfg.model
    with torch.random.fork_rng():
        torch.manual_seed(step)
        model = build_swav_model(trunk or m.trunk, m.head_hidden, m.head_out, m.head_batchnorm,
                                 m.prototypes)
    folder = Path(cfg.checkpoint.storage) / cfg.checkpoint.run_name / step_dir_name(step)
    save_state({"model": model.state_dict(), "config": cfg.to_dict(), "step": step,
                "images_seen": images_seen}, folder / "state.pt")
    (folder / META_FILE).write_text(json.dumps({"step": step, "images_seen": images_seen,
                                                "time": 0}))
    (folder / COMMIT_FILE).write_text(json.dumps({"format": COMMIT_FORMAT, "step": step,
                                                  "world_size": 1}))
    return folder


class TrappedFS:
    """A pyarrow filesystem (local by default) that lets a test act while a checkpoint is read.

    `on_open(path)` runs when a `state.pt` is opened (before the open: the file can be
    deleted first); `on_read(path)` after the first chunk of it has been read, and when it
    returns True the stream then fails like an S3 download cut off by a deleted object.
    """

    def __init__(self, on_open: Callable[[str], None] | None = None,
                 on_read: Callable[[str], bool] | None = None, inner: Any = None) -> None:
        self.inner = inner if inner is not None else pafs.LocalFileSystem()
        self.type_name = self.inner.type_name
        self.on_open = on_open
        self.on_read = on_read
        self.opened: list[str] = []

    def get_file_info(self, what: Any) -> Any:
        return self.inner.get_file_info(what)

    def open_input_stream(self, path: str) -> Any:
        if path.endswith("state.pt"):
            self.opened.append(path)
            if self.on_open is not None:
                self.on_open(path)
        stream = self.inner.open_input_stream(path)
        if path.endswith("state.pt") and self.on_read is not None:
            return _TrappedStream(stream, path, self.on_read)
        return stream


class _TrappedStream:
    def __init__(self, stream: Any, path: str, on_read: Callable[[str], bool]) -> None:
        self.stream, self.path, self.on_read = stream, path, on_read
        self.reads = 0

    def __enter__(self) -> _TrappedStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stream.close()

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        if self.reads == 2 and self.on_read(self.path):
            raise OSError(f"When reading information for key '{self.path}': connection reset")
        return self.stream.read(n)


def remove_checkpoint(state_path: str) -> None:
    shutil.rmtree(Path(state_path).parent)
