"""DESIGN §3's metric conventions, checked on every metric seer declares.

`services.metrics` checks nothing itself (prometheus_client and ray.util.metrics check what
they need, and not the same things: Ray drops a badly named metric with a warning and accepts
unsorted buckets, prometheus_client accepts a bucket of 0). The conventions are checked here,
once, in CI: every module under services/ is imported, which declares every metric
(declarations are module-level), and each one in `metrics.DECLARED` is held to the rules.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
import re

import pytest

import services
from services import metrics
from tests.deploy.test_dashboards import declared_seer_names

#: seer_<component>_<what>[_<unit>], lower-case snake_case.
NAME_RE = re.compile(r"^seer_[a-z][a-z0-9]*_[a-z0-9]+(?:_[a-z0-9]+)*$")
#: Prometheus wants base units: seconds and bytes, never a scaled or another time unit.
NOT_BASE_UNITS = {"ms", "us", "ns", "msec", "millis", "milliseconds", "microseconds",
                  "nanoseconds", "minutes", "hours", "days", "kb", "mb", "gb", "kib", "mib",
                  "gib", "kilobytes", "megabytes", "gigabytes"}
#: Labels must be bounded (every value is a time series kept for ever): a new one is a review
#: question, answered by adding it here. Never object keys, paths or anything user-supplied.
BOUNDED_LABELS = {"worker", "reason", "protocol", "metric", "trunk", "stage", "op"}


def problems(metric: metrics.Metric) -> list[str]:
    """What is wrong with one metric's name, kind suffix, labels and buckets (empty: nothing)."""
    name, found = metric.name, []
    if not NAME_RE.match(name.removesuffix("_total")):  # a counter's _total is not its <what>
        found.append(f"name must be seer_<component>_<what>_<unit>, snake_case ({NAME_RE.pattern})")
    if NOT_BASE_UNITS & set(name.split("_")):
        found.append("use base units (_seconds, _bytes)")
    if (isinstance(metric, metrics.Counter)) != name.endswith("_total"):
        found.append("counters, and only counters, end in _total")
    if isinstance(metric, metrics.Histogram) and not name.endswith(("_seconds", "_bytes")):
        found.append("a histogram measures seconds or bytes: name ends in _seconds or _bytes")
    if not metric.description:
        found.append("needs a description (the HELP line)")
    if len(set(metric.tag_keys)) != len(metric.tag_keys):
        found.append(f"duplicate tag keys {metric.tag_keys}")
    for key in set(metric.tag_keys) - BOUNDED_LABELS:
        found.append(f"tag key {key!r} is not a known bounded label {sorted(BOUNDED_LABELS)}")
    bounds = metric.boundaries
    if isinstance(metric, metrics.Histogram) and (
        not bounds or bounds[0] <= 0 or any(a >= b for a, b in itertools.pairwise(bounds))
    ):
        found.append(f"boundaries must be non-empty, positive, strictly increasing: {bounds}")
    return [f"{name}: {p}" for p in found]


def declare_everything() -> dict[str, metrics.Metric]:
    """Imports every module under services/ (declarations are module-level) → DECLARED."""
    for info in pkgutil.walk_packages(services.__path__, "services."):
        importlib.import_module(info.name)
    return metrics.DECLARED


def test_every_declared_metric_follows_the_conventions() -> None:
    declared = declare_everything()
    assert [p for metric in declared.values() for p in problems(metric)] == []


def test_every_metric_named_in_services_is_declared_at_import() -> None:
    """A metric declared inside a function would escape the check above: every `seer_*` name
    the code spells out (the dashboards test reads the same) must be declared by importing."""
    missing = declared_seer_names() - set(declare_everything())
    assert not missing, f"declare these at module level: {sorted(missing)}"
    assert {"seer_train_images_total", "seer_eval_accuracy_percent"} <= set(metrics.DECLARED)


@pytest.mark.parametrize(
    ("kind", "name", "tag_keys", "bounds", "complaint"),
    [
        (metrics.Counter, "ingest_images_total", (), (), "seer_<component>"),
        (metrics.Counter, "seer_images_total", (), (), "seer_<component>"),
        (metrics.Gauge, "seer_images", (), (), "seer_<component>"),
        (metrics.Counter, "seer_Ingest_images_total", (), (), "snake_case"),
        (metrics.Counter, "seer_ingest-images_total", (), (), "snake_case"),
        (metrics.Counter, "seer_ingest:images_total", (), (), "snake_case"),
        (metrics.Counter, "seer_ingest_images_", (), (), "snake_case"),
        (metrics.Counter, "9seer_ingest_images_total", (), (), "snake_case"),
        (metrics.Counter, "seer_ingest_images", (), (), "_total"),
        (metrics.Gauge, "seer_ingest_pool_total", (), (), "_total"),
        (metrics.Gauge, "seer_train_step_ms", (), (), "base units"),
        (metrics.Histogram, "seer_ingest_decode_time", (), (0.1,), "_seconds or _bytes"),
        (metrics.Counter, "seer_ingest_failures_total", ("key",), (), "bounded label"),
        (metrics.Counter, "seer_ingest_failures_total", ("Reason",), (), "bounded label"),
        (metrics.Counter, "seer_ingest_failures_total", ("reason", "reason"), (), "duplicate"),
        (metrics.Histogram, "seer_ingest_decode_seconds", (), (), "boundaries"),
        (metrics.Histogram, "seer_ingest_decode_seconds", (), (0.0, 1.0), "boundaries"),
        (metrics.Histogram, "seer_ingest_decode_seconds", (), (1.0, 0.5), "boundaries"),
        (metrics.Histogram, "seer_ingest_decode_seconds", (), (0.1, 0.1), "boundaries"),
    ],
)
def test_each_rule_catches_its_breach(kind: type[metrics.Metric], name: str,
                                      tag_keys: tuple[str, ...], bounds: tuple[float, ...],
                                      complaint: str) -> None:
    extra = {"boundaries": bounds} if kind is metrics.Histogram else {}
    found = problems(kind(name, "x", tag_keys, **extra))
    assert any(complaint in p for p in found), found


@pytest.mark.parametrize("name", ["seer_ingest_images_total", "seer_eval_knn_top1_ratio"])
def test_good_names_pass(name: str) -> None:
    kind = metrics.Counter if name.endswith("_total") else metrics.Gauge
    assert problems(kind(name, "x", ("reason",))) == []


def test_a_badly_named_declaration_fails_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk sees what any module declares, not only the metrics of today."""
    monkeypatch.setattr(metrics, "DECLARED", dict(declare_everything()))
    metrics.counter("seer_ingest_images", "a counter without _total")
    found = [p for metric in metrics.DECLARED.values() for p in problems(metric)]
    assert found == ["seer_ingest_images: counters, and only counters, end in _total"]
