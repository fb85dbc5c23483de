"""Metrics for every seer process: declared once, at import; exported by the process's backend.

The one job here is choosing the backend, per process, by what the process is: a Ray worker
(actor, task, Ray Train worker, read task) records through ``ray.util.metrics`` and the node's
agent exports it, prefixed ``ray_``, so Prometheus scrapes one port per node, not per actor; any
other process (the CLI driver, also after ``ray.init``; the evaluator; benchmarks; tests)
records into :data:`REGISTRY`, which it serves itself. The backend object is built at a metric's
first use, so module-level declarations work in the driver and in every worker and nobody pins
a backend. prometheus_client and Ray check names, tags and buckets; DECLARED lets
tests/services/test_metric_conventions.py hold every metric to DESIGN §3.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import prometheus_client

#: The registry a non-Ray process serves (not prometheus_client's global one, so library
#: metrics do not end up on seer's page).
REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)
#: Every metric declared in this process, by name.
DECLARED: dict[str, Metric] = {}
_LOCK = threading.Lock()


def in_ray_worker() -> bool:
    """Whether this process is a Ray worker (a driver after ``ray.init`` is not)."""
    ray = sys.modules.get("ray")  # a worker imported ray before it ran any of our code
    return ray is not None and ray._private.worker.global_worker.mode == ray.WORKER_MODE


class Metric:
    """A declared metric; its backend object (Ray's or prometheus_client's, same class name)
    is built at first use."""

    def __init__(self, name: str, description: str, tag_keys: Sequence[str] = (),
                 boundaries: Sequence[float] = ()) -> None:
        self.name, self.description = name, description
        self.tag_keys = tuple(tag_keys)
        self.boundaries = tuple(float(b) for b in boundaries)
        self._impl: Any = None
        self._ray = False

    def ready(self) -> Metric:
        """Builds the backend object now: a page shows an unlabelled series (0) from here on."""
        with _LOCK:
            if self._impl is None:
                self._ray, kind = in_ray_worker(), type(self).__name__
                bounds = list(self.boundaries)
                if self._ray:
                    from ray.util import metrics as ray_metrics

                    extra: dict[str, Any] = {"boundaries": bounds} if bounds else {}
                    self._impl = getattr(ray_metrics, kind)(
                        self.name, self.description, tag_keys=self.tag_keys, **extra)
                else:
                    extra = {"buckets": bounds} if bounds else {}
                    self._impl = getattr(prometheus_client, kind)(
                        self.name, self.description, labelnames=self.tag_keys,
                        registry=REGISTRY, **extra)
        return self

    def _record(self, method: str, value: float, tags: Mapping[str, Any] | None) -> None:
        if self._impl is None:
            self.ready()
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if self._ray:  # Ray wants str tag values and floats (not numpy scalars)
            getattr(self._impl, method)(float(value), tags=tags or None)
        else:
            getattr(self._impl.labels(**tags) if tags else self._impl, method)(value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} tags={self.tag_keys}>"


class Counter(Metric):
    def inc(self, value: float = 1.0, tags: Mapping[str, Any] | None = None) -> None:
        """Adds ``value`` >= 0; 0 shows the series on a page (Ray refuses 0: skipped there)."""
        if value or not self.ready()._ray:
            self._record("inc", value, tags)


class Gauge(Metric):
    def set(self, value: float, tags: Mapping[str, Any] | None = None) -> None:
        self._record("set", value, tags)


class Histogram(Metric):
    def observe(self, value: float, tags: Mapping[str, Any] | None = None) -> None:
        self._record("observe", value, tags)


M = TypeVar("M", bound=Metric)


def _declare(metric: M) -> M:
    """Registers ``metric``; a second declaration of a name returns the first (two workers in
    one process) if it is the same metric, and is refused if not (one name, one series)."""
    with _LOCK:
        first = DECLARED.setdefault(metric.name, metric)
    same = (type(first), first.tag_keys, first.boundaries) == (
        type(metric), metric.tag_keys, metric.boundaries)
    if not same:
        raise ValueError(f"metric {metric.name} is already declared as {first!r}")
    return first  # type: ignore[return-value]


def counter(name: str, description: str, tag_keys: Sequence[str] = ()) -> Counter:
    return _declare(Counter(name, description, tag_keys))


def gauge(name: str, description: str, tag_keys: Sequence[str] = ()) -> Gauge:
    return _declare(Gauge(name, description, tag_keys))


def histogram(name: str, description: str, boundaries: Sequence[float],
              tag_keys: Sequence[str] = ()) -> Histogram:
    return _declare(Histogram(name, description, tag_keys, boundaries))


def serve(port: int, addr: str = "127.0.0.1") -> tuple[Any, Any]:
    """Serves :data:`REGISTRY` on ``http://addr:port/metrics`` from a daemon thread; returns
    ``(server, thread)``. Loopback by default: all interfaces is a deployment's choice."""
    return prometheus_client.start_http_server(port, addr=addr, registry=REGISTRY)
