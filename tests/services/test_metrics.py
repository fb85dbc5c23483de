"""The metrics facade outside Ray: naming rules, tags, re-declaration, exposition over HTTP."""

from __future__ import annotations

import socket
import urllib.request

import prometheus_client
import pytest

from services import metrics


@pytest.fixture
def registry() -> prometheus_client.CollectorRegistry:
    return prometheus_client.CollectorRegistry()


def _value(reg: prometheus_client.CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


@pytest.mark.parametrize(
    "name",
    [
        "seer_ingest_images_total",
        "seer_train_step_seconds",
        "seer_feed_pool_keys",
        "seer_eval_knn_top1_ratio",
    ],
)
def test_valid_names(name: str) -> None:
    assert metrics.validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "ingest_images_total",  # no seer_ prefix
        "seer_images",  # no component
        "seer_Ingest_images_total",  # upper case
        "seer_ingest-images_total",  # not a Prometheus name
        "seer_ingest:images_total",  # ':' is for recording rules
        "seer_ingest_images_",  # trailing underscore
        "9seer_ingest_images",
    ],
)
def test_invalid_names_rejected(name: str, registry: prometheus_client.CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        metrics.counter(name, "x", backend="prometheus", registry=registry)


def test_counter_with_tags(registry: prometheus_client.CollectorRegistry) -> None:
    c = metrics.counter(
        "seer_test_failures_total", "failures", ("reason",), backend="prometheus",
        registry=registry,
    )
    assert c.backend == "prometheus"
    c.inc(1, {"reason": "corrupt"})
    c.inc(2, {"reason": "corrupt"})
    c.inc(1, {"reason": "vanished"})
    c.inc(0, {"reason": "too_large"})  # accepted (Ray would raise on 0): shows the series at 0
    assert _value(registry, "seer_test_failures_total", reason="corrupt") == 3
    assert _value(registry, "seer_test_failures_total", reason="vanished") == 1
    assert _value(registry, "seer_test_failures_total", reason="too_large") == 0
    with pytest.raises(ValueError, match="cannot decrease"):
        c.inc(-1, {"reason": "corrupt"})
    with pytest.raises(ValueError, match="do not match the declared tag keys"):
        c.inc(1)
    with pytest.raises(ValueError, match="do not match the declared tag keys"):
        c.inc(1, {"reason": "x", "key": "a/b.jpg"})


def test_gauge_and_histogram(registry: prometheus_client.CollectorRegistry) -> None:
    g = metrics.gauge("seer_test_pool_keys", "keys", backend="prometheus", registry=registry)
    g.set(10)
    g.set(7)
    assert _value(registry, "seer_test_pool_keys") == 7
    h = metrics.histogram(
        "seer_test_decode_seconds", "decode", (0.01, 0.1, 1.0), ("worker",),
        backend="prometheus", registry=registry,
    )
    for v in (0.005, 0.05, 0.5, 5.0):
        h.observe(v, {"worker": 3})  # non-string tag values are stringified
    assert _value(registry, "seer_test_decode_seconds_count", worker="3") == 4
    assert _value(registry, "seer_test_decode_seconds_bucket", worker="3", le="0.1") == 2
    assert _value(registry, "seer_test_decode_seconds_bucket", worker="3", le="+Inf") == 4
    assert _value(registry, "seer_test_decode_seconds_sum", worker="3") == pytest.approx(5.555)


@pytest.mark.parametrize("bounds", [(), (0.0, 1.0), (1.0, 0.5), (0.1, 0.1)])
def test_histogram_boundaries_validated(
    bounds: tuple[float, ...], registry: prometheus_client.CollectorRegistry
) -> None:
    with pytest.raises(ValueError, match="boundaries"):
        metrics.histogram(
            "seer_test_bad_seconds", "x", bounds, backend="prometheus", registry=registry
        )


def test_redeclaration_returns_same_object(registry: prometheus_client.CollectorRegistry) -> None:
    a = metrics.counter("seer_test_again_total", "x", ("reason",), backend="prometheus",
                        registry=registry)
    b = metrics.counter("seer_test_again_total", "x", ("reason",), backend="prometheus",
                        registry=registry)
    assert a is b
    with pytest.raises(ValueError, match="already declared"):
        metrics.gauge("seer_test_again_total", "x", ("reason",), backend="prometheus",
                      registry=registry)
    with pytest.raises(ValueError, match="already declared"):
        metrics.counter("seer_test_again_total", "x", ("worker",), backend="prometheus",
                        registry=registry)
    # Another registry is another namespace.
    other = prometheus_client.CollectorRegistry()
    c = metrics.counter("seer_test_again_total", "x", ("reason",), backend="prometheus",
                        registry=other)
    assert c is not a


def test_bad_tag_keys(registry: prometheus_client.CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="invalid tag key"):
        metrics.counter("seer_test_tags_total", "x", ("bad-key",), backend="prometheus",
                        registry=registry)
    with pytest.raises(ValueError, match="duplicate"):
        metrics.counter("seer_test_tags_total", "x", ("a", "a"), backend="prometheus",
                        registry=registry)
    with pytest.raises(ValueError, match="backend"):
        metrics.counter("seer_test_tags_total", "x", backend="statsd",  # type: ignore[arg-type]
                        registry=registry)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_over_http(registry: prometheus_client.CollectorRegistry) -> None:
    c = metrics.counter("seer_test_served_total", "served", backend="prometheus",
                        registry=registry)
    c.inc(5)
    assert b"seer_test_served_total 5.0" in metrics.render(registry)
    port = _free_port()
    server, thread = metrics.serve(port, registry=registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert "# HELP seer_test_served_total served" in body
        assert "seer_test_served_total 5.0" in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_auto_backend_follows_ray(registry: prometheus_client.CollectorRegistry) -> None:
    """Outside Ray: prometheus_client; inside (the integration session may be up): Ray's."""
    g = metrics.gauge("seer_test_auto_keys", "x", registry=registry)
    assert g.backend == ("ray" if metrics.ray_active() else "prometheus")
    g.set(3)
    if g.backend == "prometheus":
        assert _value(registry, "seer_test_auto_keys") == 3
