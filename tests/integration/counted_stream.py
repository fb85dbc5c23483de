"""A bounded, counted ingest stream, for tests that check every sampled key's outcome exactly.

The production stream (``services.ingest.stream.build_stream``) never ends and reports only to its
metrics. :class:`CountedStream` builds that same stream with two substitutions, made with
``monkeypatch`` in the driver and carried to Ray's processes by pickling, by value (Ray's
workers are not meant to import ``tests``: see tests/integration/test_stream_fault.py):

- each read task stops after ``chunks`` chunks and records the keys it drew
  (:class:`BoundedRead`), so the stream ends and the test knows what was sampled;
- the ingest actor's calls to ``seer_ingest_images_total`` and ``seer_ingest_failures_total``
  are recorded on their way to the metric (:func:`counting_actor`): what the test compares
  with the outcome each sampled key must have.

Records are JSON lines in one folder, a file per process, written before the rows move on:
once the bounded stream has been read to its end, they are complete. If ``build_stream`` stops
using ``EndlessDatasource`` or ``IngestActor``, ``monkeypatch`` fails loudly (or the stream
never ends), never silently.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import cloudpickle

from services.ingest import stream

if TYPE_CHECKING:
    import pytest

_ENDLESS_SOURCE = stream.EndlessDatasource
_INGEST_ACTOR = stream.IngestActor


def _record(folder: str, kind: str, item: Any) -> None:
    with open(os.path.join(folder, f"{kind}-{os.getpid()}.jsonl"), "a") as handle:
        handle.write(json.dumps(item) + "\n")


@dataclasses.dataclass(frozen=True)
class BoundedRead(stream.EndlessRead):
    """A production read task that ends after ``chunks`` chunks, recording each one's keys."""

    chunks: int = 1
    folder: str = ""

    def key_chunks(self) -> Iterator[list[str]]:
        for keys in itertools.islice(super().key_chunks(), self.chunks):
            _record(self.folder, "keys", keys)
            yield keys


class BoundedSource(_ENDLESS_SOURCE):
    """The production datasource, whose read tasks are :class:`BoundedRead` ones."""

    def __init__(self, *args: Any, chunks: int, folder: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunks, self.folder = chunks, folder

    def reads(self) -> list[stream.EndlessRead]:
        return [BoundedRead(**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)},
                            chunks=self.chunks, folder=self.folder) for r in super().reads()]


class _Recorded:
    """A counter whose increments are recorded (by ``name``, or by ``reason`` tag) and passed
    on to the metric."""

    def __init__(self, metric: Any, folder: str, name: str | None) -> None:
        self.metric, self.folder, self.name = metric, folder, name

    def inc(self, value: float = 1.0, tags: dict[str, Any] | None = None) -> None:
        self.metric.inc(value, tags)
        _record(self.folder, "counts", [self.name or (tags or {})["reason"], value])


def counting_actor(folder: str) -> type:
    """The production ingest actor, its image and failure counters recorded into ``folder``."""

    class CountingActor(_INGEST_ACTOR):
        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            meter = self.cropper.meter
            meter.images = _Recorded(meter.images, folder, "images")
            meter.failures = _Recorded(meter.failures, folder, None)

    return CountingActor


class CountedStream:
    """Builds bounded, counted streams; :meth:`keys` and :meth:`counts` sum up every stream
    built so far (the record folder is the test's). A context manager: inside it, this module
    travels to Ray's processes by value."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
        self.monkeypatch, self.folder = monkeypatch, folder
        folder.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> CountedStream:
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        return self

    def __exit__(self, *exc: object) -> None:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    def build(self, cfg: Any, chunks: int) -> Any:
        """``build_stream(cfg)``, each read task ending after ``chunks`` chunks."""
        where = str(self.folder)
        self.monkeypatch.setattr(stream, "EndlessDatasource",
                                 functools.partial(BoundedSource, chunks=chunks, folder=where))
        self.monkeypatch.setattr(stream, "IngestActor", counting_actor(where))
        return stream.build_stream(cfg)

    def _lines(self, kind: str) -> list[Any]:
        return [json.loads(line) for path in sorted(self.folder.glob(f"{kind}-*.jsonl"))
                for line in path.read_text().splitlines()]

    def keys(self) -> list[str]:
        """Every key the read tasks drew (with repeats)."""
        return [key for chunk in self._lines("keys") for key in chunk]

    def counts(self) -> Counter[str]:
        """What the ingest actors counted: ``images`` and one entry per failure reason."""
        counts: Counter[str] = Counter()
        for name, value in self._lines("counts"):
            counts[name] += value
        return counts
