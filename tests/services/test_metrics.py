"""The metrics adapter outside Ray: tags, re-declaration, exposition over HTTP, the backend.

Names, tag keys and buckets are seer's conventions, checked on every declared metric in
test_metric_conventions.py; the backend a Ray worker gets is checked in
tests/integration/test_metrics_backend.py.
"""

from __future__ import annotations

import socket
import urllib.request

import prometheus_client
import pytest

from services import metrics


def _value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def render() -> bytes:
    """The exposition of the process's registry, as its /metrics page serves it."""
    return prometheus_client.generate_latest(metrics.REGISTRY)


def test_counter_with_tags() -> None:
    c = metrics.counter("seer_test_failures_total", "failures", ("reason",))
    c.inc(1, {"reason": "corrupt"})
    c.inc(2, {"reason": "corrupt"})
    c.inc(1, {"reason": "vanished"})
    c.inc(0, {"reason": "too_large"})  # accepted (Ray would raise on 0): shows the series at 0
    assert _value("seer_test_failures_total", reason="corrupt") == 3
    assert _value("seer_test_failures_total", reason="vanished") == 1
    assert _value("seer_test_failures_total", reason="too_large") == 0
    with pytest.raises(ValueError, match="non-negative"):
        c.inc(-1, {"reason": "corrupt"})
    with pytest.raises(ValueError, match="missing label values"):
        c.inc(1)
    with pytest.raises(ValueError, match="Incorrect label names"):
        c.inc(1, {"reason": "x", "key": "a/b.jpg"})


def test_gauge_and_histogram() -> None:
    g = metrics.gauge("seer_test_pool_keys", "keys")
    g.set(10)
    g.set(7)
    assert _value("seer_test_pool_keys") == 7
    h = metrics.histogram("seer_test_decode_seconds", "decode", (0.01, 0.1, 1.0), ("worker",))
    for v in (0.005, 0.05, 0.5, 5.0):
        h.observe(v, {"worker": 3})  # non-string tag values are stringified
    assert _value("seer_test_decode_seconds_count", worker="3") == 4
    assert _value("seer_test_decode_seconds_bucket", worker="3", le="0.1") == 2
    assert _value("seer_test_decode_seconds_bucket", worker="3", le="+Inf") == 4
    assert _value("seer_test_decode_seconds_sum", worker="3") == pytest.approx(5.555)


def test_a_declaration_is_exported_only_once_used() -> None:
    """Declared at import in every process, a metric appears on a page only where it is used
    (the driver imports the ingest code but must not show ingest series at 0)."""
    g = metrics.gauge("seer_test_unused_keys", "never set")
    assert b"seer_test_unused_keys" not in render()
    g.ready()
    assert _value("seer_test_unused_keys") == 0


def test_redeclaration_returns_same_object() -> None:
    a = metrics.counter("seer_test_again_total", "x", ("reason",))
    assert metrics.counter("seer_test_again_total", "x", ("reason",)) is a
    assert metrics.DECLARED["seer_test_again_total"] is a
    with pytest.raises(ValueError, match="already declared"):
        metrics.gauge("seer_test_again_total", "x", ("reason",))
    with pytest.raises(ValueError, match="already declared"):
        metrics.counter("seer_test_again_total", "x", ("worker",))
    h = metrics.histogram("seer_test_again_seconds", "x", (0.1, 1.0))
    with pytest.raises(ValueError, match="already declared"):
        metrics.histogram("seer_test_again_seconds", "x", (0.1, 2.0))
    assert metrics.histogram("seer_test_again_seconds", "x", [0.1, 1]) is h


def test_outside_ray_the_process_serves_its_own_registry() -> None:
    assert not metrics.in_ray_worker()
    c = metrics.counter("seer_test_backend_total", "x")
    c.inc(2)
    assert _value("seer_test_backend_total") == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_over_http() -> None:
    c = metrics.counter("seer_test_served_total", "served")
    c.inc(5)
    assert b"seer_test_served_total 5.0" in render()
    port = _free_port()
    server, thread = metrics.serve(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert "# HELP seer_test_served_total served" in body
        assert "seer_test_served_total 5.0" in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
