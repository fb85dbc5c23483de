"""The results file (one JSON object per line, appended, never rewritten) and the key of its rows.

JSON lines because an evaluator that is killed mid-write must cost at most its last line: each
append is flushed and fsynced, a reader skips (and counts) lines it cannot parse, and the next
append starts on a fresh line, so one torn write never poisons the file. Every row is one number:

    {"run": "seer-local", "step": 500, "images_seen": 8000, "trunk": "checkpoint",
     "stage": "res5", "protocol": "knn20", "metric": "top1", "value": 41.25,
     "wall_time": 1764412345.6, "checkpoint": "runs/checkpoints/seer-local/step_000000000500",
     "data": "runs/labelled", "settings": {"protocols": ["knn"], "stage": "res5",
     "data": "runs/labelled", "image_size": 224, ..., "knn_k": [20], "temperature": 0.07},
     "settings_id": "3f9c0a1b2c4d"}

`trunk` is "checkpoint" or "random" (the baseline, with step 0 and images_seen 0). `settings`
are what the number depends on besides the checkpoint, `settings_id` their digest. Done steps,
the stored baseline, the PNG and the gauges only ever look at rows of the current settings, so
changing `--image-size`, k or the protocols starts new rows and a new baseline beside the old
ones, and a row without a key (what it was computed with is unknown) matches none.

Left out of the settings on purpose, since they do not change a number: the poll interval, the
metrics port, the results path, the device and thread count (floating-point noise only), whether
a baseline is wanted, the endpoint; and the feature-extraction batch size (the frozen trunk runs
in eval mode, so its BatchNorm uses stored statistics), except for fine-tuning, which trains
with it.

The file may live in S3 (`s3://bucket/key`): S3 cannot append, so a local copy is kept and the
whole object is uploaded after each append (one writer per results file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from seer_core.config.schema import EvalConfig
from services.storage import RunStorage, resolve_storage

log = logging.getLogger("seer.eval")

#: Settings every protocol depends on: which features, of which images, split how; `seed`
#: seeds the random baseline trunk (and the probes).
COMMON: tuple[str, ...] = ("stage", "data", "image_size", "val_fraction", "split_seed", "seed")
#: What each protocol adds (k values and low-shot fractions are also in the protocol names).
BY_PROTOCOL: dict[str, tuple[str, ...]] = {
    "knn": ("knn_k", "temperature"),
    "linear": ("probe_epochs",),
    "lowshot": ("lowshot_fractions", "lowshot_seeds", "probe_epochs"),
    "finetune": ("finetune_steps", "finetune_lr", "batch_size"),
}


def eval_settings(s: EvalConfig) -> dict[str, Any]:
    """The settings that change the numbers of an evaluation with `s` (a plain, JSON-able
    dict). The protocol set is part of it: its rows are one evaluation, drawn together. Lists
    are sorted: their order changes no number."""
    names = ["protocols", *COMMON]
    for protocol in sorted(s.protocols):
        names += BY_PROTOCOL[protocol]
    values = {name: getattr(s, name) for name in names}
    return {name: sorted(v) if isinstance(v, list) else v for name, v in values.items()}


def settings_id(settings: dict[str, Any]) -> str:
    """A short, stable digest of `eval_settings(...)`: equal settings, equal id."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rows_for(rows: Iterable[dict[str, Any]], run: str, key: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("run") == run and r.get("settings_id") == key]


def default_results_uri(storage: str, run_name: str) -> str:
    """`<checkpoint.storage>/<run_name>-eval/results.jsonl`: beside the run, not inside it
    (the run folder belongs to the trainer's retention)."""
    return f"{storage.rstrip('/')}/{run_name}-eval/results.jsonl"


def parse_rows(text: str) -> tuple[list[dict[str, Any]], int]:
    """The rows of a results file, and how many lines could not be read."""
    rows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict) and {"run", "step", "protocol", "metric", "value"} <= set(row):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


class ResultsFile:
    """A results file (local path or s3://) and the PNG beside it (same name, `.png`)."""

    def __init__(self, uri: str, endpoint_url: str | None = None) -> None:
        self.uri = uri
        parsed = urlparse(uri)
        self._store: RunStorage | None = None  # where an s3:// file lives (a local copy is kept)
        self._remote = ""
        if parsed.scheme == "s3":
            key = parsed.path.strip("/")
            if not parsed.netloc or not key:
                raise ValueError(f"eval.results: {uri!r} must be s3://bucket/key")
            self._store = resolve_storage(f"s3://{parsed.netloc}", "", endpoint_url)
            self._remote = f"{parsed.netloc}/{key}"
            self._cache = tempfile.TemporaryDirectory(prefix="seer-eval-results-")
            self.path = Path(self._cache.name) / Path(key).name
        elif parsed.scheme in ("", "file"):
            self.path = Path(os.path.abspath(parsed.path if parsed.scheme else uri))
        else:
            raise ValueError(f"eval.results: {uri!r} has an unsupported scheme; allowed: a path, "
                             "file://..., s3://bucket/key")
        self.plot_path = self.path.with_suffix(".png")

    @property
    def plot_uri(self) -> str:
        if self._store is not None:
            return f"s3://{PurePosixPath(self._remote).with_suffix('.png')}"
        return str(self.plot_path)

    def read(self) -> list[dict[str, Any]]:
        """Every readable row (an S3 file is downloaded first); bad lines are logged."""
        if self._store is not None and (data := self._store.read_bytes(self._remote)) is not None:
            self.path.write_bytes(data)
        if not self.path.is_file():
            return []
        rows, bad = parse_rows(self.path.read_text(errors="replace"))
        if bad:
            log.warning("results file %s: skipped %d unreadable line(s) (a write cut short?)",
                        self.uri, bad)
        return rows

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Appends rows (flush + fsync), starting on a new line if the last write was torn."""
        lines = "".join(json.dumps(row, sort_keys=False) + "\n" for row in rows)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    lines = "\n" + lines
            handle.write(lines.encode())
            handle.flush()
            os.fsync(handle.fileno())
        if self._store is not None:
            self._store.write_bytes(self._remote, self.path.read_bytes())

    def publish_plot(self) -> None:
        """Uploads the PNG (drawn at `plot_path`) when the results live in S3."""
        if self._store is not None and self.plot_path.is_file():
            self._store.write_bytes(self.plot_uri.removeprefix("s3://"),
                                    self.plot_path.read_bytes())


def done_steps(rows: Iterable[dict[str, Any]], run: str, key: str) -> set[int]:
    """Checkpoint steps already evaluated for this run with the settings `key`."""
    return {int(r["step"]) for r in rows_for(rows, run, key) if r.get("trunk") == "checkpoint"}
