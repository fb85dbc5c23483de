"""Production code carries no hook that only tests use (issue 19, point 4).

Tests observe the stream and the run through what users see (metrics, Ray's process titles,
logs) or through helpers under ``tests/`` (``tests/integration/counted_stream.py`` bounds and
counts a stream). A parameter, field or class that only a test sets is code every reader pays
for and no user needs; these checks fail if one comes back. No Ray is started.
"""

from __future__ import annotations

import dataclasses
import inspect

from services.driver.pretrain import run_pretraining
from services.feed import FeedSpec
from services.ingest import crop, read, stream
from services.trainer.build import build_trainer


def _params(fn: object) -> set[str]:
    return set(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_the_stream_has_no_stats_or_bounds_for_tests() -> None:
    assert not any(hasattr(module, "IngestStats") for module in (read, crop, stream))
    assert not {"start_stats", "read_stats"} & (set(vars(stream)) | set(vars(read)))
    hooks = {"stats", "seed", "spec", "max_chunks"}
    assert not hooks & _params(stream.build_stream), _params(stream.build_stream)
    assert not hooks & _params(stream.dataset_factory)
    assert not hooks & set(stream.dataset_factory(_cfg()).keywords)
    bounds = {"seed", "max_chunks"}  # the reads' own spec is the feed, not an override
    assert not bounds & _params(read.EndlessDatasource)
    assert not bounds & {f.name for f in dataclasses.fields(read.EndlessRead)}
    assert _params(crop.IngestActor) == {"cfg"}


def test_the_run_and_the_feed_have_no_knobs_for_tests() -> None:
    assert "ingest_stats" not in _params(run_pretraining)
    assert "stats" not in _params(build_trainer)
    assert "seed" not in {f.name for f in dataclasses.fields(FeedSpec)}
    assert not hasattr(crop.Cropper(_cfg()), "counts")  # the metric is the count


def _cfg() -> object:
    from seer_core.config import config_from_dict

    return config_from_dict({"augment": {"global_size": 32, "local_size": 16, "n_local": 2}})
