"""One small metrics facade for every seer component, in or out of Ray.

Why a facade: the same code (the ingest worker, the trainer loop) runs inside Ray actors, where
metrics must go through ``ray.util.metrics`` so that Ray exports them on the node's metrics port
(Prometheus scrapes one port per node, not one per actor), and outside Ray (the benchmark, the
CLI, unit tests), where ``prometheus_client`` objects in a registry the CLI can serve are the
natural home. Callers declare a metric once and never care which one they got.

Usage (any component)::

    from services import metrics

    IMAGES = metrics.counter("seer_ingest_images_total", "images turned into crops",
                             tag_keys=("worker",))
    IMAGES.inc(1, {"worker": "0"})
    STEP = metrics.histogram("seer_train_step_seconds", "wall time of a step",
                             boundaries=(0.05, 0.1, 0.5, 1, 5))
    STEP.observe(0.3)

Rules (DESIGN §3): names are ``seer_<component>_<what>_<unit>`` (``_total`` for counters,
``_seconds``/``_bytes`` for measured quantities); tags only for bounded values (a failure
reason, a worker index) — never object keys, paths or anything a user controls without bound,
because each distinct tag value is a new time series kept forever by Prometheus.

Inside Ray, Ray adds a ``ray_`` prefix on export (``ray_seer_ingest_images_total``). The backend
is chosen when a metric is *declared*: declare metrics in the process that records them (in an
actor's ``__init__``, not at import time in the driver) so an actor gets Ray metrics.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import prometheus_client

Backend = Literal["auto", "ray", "prometheus"]

#: Prometheus' own rule, minus ':' (reserved for recording rules; Ray warns about it).
PROMETHEUS_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: The project convention: ``seer_<component>_<what>[_<unit>]``, lower case.
SEER_NAME_RE = re.compile(r"^seer_[a-z][a-z0-9]*_[a-z0-9]+(?:_[a-z0-9]+)*$")
TAG_KEY_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

#: The registry seer serves outside Ray (kept apart from prometheus_client's global default
#: registry so that library metrics and test runs do not collide with ours).
REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)

#: Latency boundaries (seconds) that fit both a 2 ms decode and a 2 min retried fetch.
DEFAULT_SECONDS_BOUNDARIES: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
)


def validate_name(name: str) -> str:
    """Returns ``name`` if it follows DESIGN §3, else raises ValueError saying what is wrong.

    Checked eagerly because both backends fail badly on bad names: Ray silently discards the
    metric, prometheus_client raises only at declaration in some process far from the author.
    """
    if not isinstance(name, str) or not PROMETHEUS_NAME_RE.match(name):
        raise ValueError(
            f"invalid metric name {name!r}: must match {PROMETHEUS_NAME_RE.pattern}"
        )
    if not SEER_NAME_RE.match(name):
        raise ValueError(
            f"invalid metric name {name!r}: must be seer_<component>_<what>_<unit>, lower case "
            f"(regex {SEER_NAME_RE.pattern}), e.g. seer_ingest_images_total"
        )
    return name


def _validate_tag_keys(name: str, tag_keys: Sequence[str]) -> tuple[str, ...]:
    keys = tuple(tag_keys)
    for key in keys:
        if not isinstance(key, str) or not TAG_KEY_RE.match(key) or key.startswith("__"):
            raise ValueError(f"metric {name}: invalid tag key {key!r}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"metric {name}: duplicate tag keys {keys}")
    return keys


def ray_active() -> bool:
    """Whether this process is connected to Ray (a driver after ``ray.init``, or a worker)."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency, but seer_core users may lack it
        return False
    return bool(ray.is_initialized())


def _resolve(backend: Backend) -> str:
    if backend == "auto":
        return "ray" if ray_active() else "prometheus"
    if backend not in ("ray", "prometheus"):
        raise ValueError(f"backend must be one of auto, ray, prometheus; got {backend!r}")
    return backend


class Metric:
    """Common part of the three kinds: name, tag keys, tag checking, the backend object."""

    kind = "metric"

    def __init__(
        self,
        name: str,
        description: str,
        tag_keys: Sequence[str],
        backend: str,
        impl: Any,
    ) -> None:
        self.name = name
        self.description = description
        self.tag_keys = tuple(tag_keys)
        self.backend = backend
        self._impl = impl

    def _tags(self, tags: Mapping[str, Any] | None) -> dict[str, str]:
        """Checks tags against the declared keys; values are stringified (a worker index)."""
        given = dict(tags or {})
        if set(given) != set(self.tag_keys):
            raise ValueError(
                f"metric {self.name}: tags {sorted(given)} do not match the declared tag keys "
                f"{list(self.tag_keys)}"
            )
        return {k: str(v) for k, v in given.items()}

    def _target(self, tags: Mapping[str, Any] | None) -> tuple[Any, dict[str, str]]:
        final = self._tags(tags)
        if self.backend == "prometheus" and self.tag_keys:
            return self._impl.labels(**final), final
        return self._impl, final

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.backend}) tags={self.tag_keys}>"


class Counter(Metric):
    """A monotonically increasing count (events, bytes)."""

    kind = "counter"

    def inc(self, value: float = 1.0, tags: Mapping[str, Any] | None = None) -> None:
        """Adds ``value`` (>= 0; 0 is a no-op, which Ray itself would reject)."""
        if value < 0:
            raise ValueError(f"counter {self.name}: cannot decrease (value {value})")
        target, final = self._target(tags)
        if value == 0:
            return
        if self.backend == "ray":
            target.inc(float(value), tags=final or None)
        else:
            target.inc(value)


class Gauge(Metric):
    """A value that goes up and down (pool size, queue depth, learning rate)."""

    kind = "gauge"

    def set(self, value: float, tags: Mapping[str, Any] | None = None) -> None:
        target, final = self._target(tags)
        if self.backend == "ray":
            target.set(float(value), tags=final or None)
        else:
            target.set(value)


class Histogram(Metric):
    """A distribution of observed values in fixed buckets (latencies, sizes)."""

    kind = "histogram"

    def __init__(self, *args: Any, boundaries: tuple[float, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.boundaries = boundaries

    def observe(self, value: float, tags: Mapping[str, Any] | None = None) -> None:
        target, final = self._target(tags)
        if self.backend == "ray":
            target.observe(float(value), tags=final or None)
        else:
            target.observe(value)


# One object per (backend, registry, name): declaring twice (two workers in one process, a test
# re-creating a worker) must return the same metric, because prometheus_client refuses a second
# registration of a name and Ray would report two series.
_CACHE: dict[tuple[str, int, str], Metric] = {}
_LOCK = threading.Lock()


def _declare(
    kind: str,
    name: str,
    description: str,
    tag_keys: Sequence[str],
    backend: Backend,
    registry: prometheus_client.CollectorRegistry | None,
    boundaries: tuple[float, ...] = (),
) -> Any:
    validate_name(name)
    keys = _validate_tag_keys(name, tag_keys)
    chosen = _resolve(backend)
    reg = registry if registry is not None else REGISTRY
    cache_key = (chosen, id(reg) if chosen == "prometheus" else 0, name)
    with _LOCK:
        existing = _CACHE.get(cache_key)
        if existing is not None:
            same = existing.kind == kind and existing.tag_keys == keys
            if kind == "histogram":
                same = same and existing.boundaries == boundaries  # type: ignore[attr-defined]
            if not same:
                raise ValueError(
                    f"metric {name} is already declared as a {existing.kind} with tag keys "
                    f"{list(existing.tag_keys)}; names must be unique across kinds"
                )
            return existing
        impl = _make_impl(kind, name, description, keys, chosen, reg, boundaries)
        cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[kind]
        extra = {"boundaries": boundaries} if kind == "histogram" else {}
        metric = cls(name, description, keys, chosen, impl, **extra)
        _CACHE[cache_key] = metric
        return metric


def _make_impl(
    kind: str,
    name: str,
    description: str,
    keys: tuple[str, ...],
    backend: str,
    registry: prometheus_client.CollectorRegistry,
    boundaries: tuple[float, ...],
) -> Any:
    if backend == "ray":
        from ray.util import metrics as ray_metrics

        if kind == "counter":
            return ray_metrics.Counter(name, description, tag_keys=keys)
        if kind == "gauge":
            return ray_metrics.Gauge(name, description, tag_keys=keys)
        return ray_metrics.Histogram(name, description, boundaries=list(boundaries), tag_keys=keys)
    doc = description or name
    if kind == "counter":
        return prometheus_client.Counter(name, doc, labelnames=keys, registry=registry)
    if kind == "gauge":
        return prometheus_client.Gauge(name, doc, labelnames=keys, registry=registry)
    return prometheus_client.Histogram(
        name, doc, labelnames=keys, buckets=list(boundaries), registry=registry
    )


def counter(
    name: str,
    description: str = "",
    tag_keys: Sequence[str] = (),
    *,
    backend: Backend = "auto",
    registry: prometheus_client.CollectorRegistry | None = None,
) -> Counter:
    """Declares (or returns the already declared) counter ``name``; see the module docstring."""
    return _declare("counter", name, description, tag_keys, backend, registry)


def gauge(
    name: str,
    description: str = "",
    tag_keys: Sequence[str] = (),
    *,
    backend: Backend = "auto",
    registry: prometheus_client.CollectorRegistry | None = None,
) -> Gauge:
    """Declares (or returns the already declared) gauge ``name``."""
    return _declare("gauge", name, description, tag_keys, backend, registry)


def histogram(
    name: str,
    description: str = "",
    boundaries: Sequence[float] = DEFAULT_SECONDS_BOUNDARIES,
    tag_keys: Sequence[str] = (),
    *,
    backend: Backend = "auto",
    registry: prometheus_client.CollectorRegistry | None = None,
) -> Histogram:
    """Declares a histogram; ``boundaries`` are strictly increasing and positive (Ray's rule)."""
    bounds = tuple(float(b) for b in boundaries)
    if not bounds or any(b <= 0 for b in bounds) or any(
        a >= b for a, b in itertools.pairwise(bounds)
    ):
        raise ValueError(
            f"metric {name}: boundaries must be non-empty, positive and strictly increasing, "
            f"got {list(boundaries)}"
        )
    return _declare("histogram", name, description, tag_keys, backend, registry, bounds)


def render(registry: prometheus_client.CollectorRegistry | None = None) -> bytes:
    """The Prometheus text exposition of the (default seer) registry, for a /metrics page."""
    return prometheus_client.generate_latest(registry if registry is not None else REGISTRY)


def serve(
    port: int,
    addr: str = "127.0.0.1",
    registry: prometheus_client.CollectorRegistry | None = None,
) -> tuple[Any, Any]:
    """Serves the registry on ``http://addr:port/metrics`` from a daemon thread.

    Returns ``(server, thread)``; call ``server.shutdown()`` to stop. Loopback by default: a
    metrics page on all interfaces is a deliberate deployment choice, not a default.
    """
    return prometheus_client.start_http_server(
        port, addr=addr, registry=registry if registry is not None else REGISTRY
    )
