"""services.metrics picks the backend by what the process is, not by when a metric was declared.

The metrics below were declared at import, before the session's ``ray.init``; the driver (this
process, Ray initialised) records into its own registry, which the CLI serves, and a Ray worker
records the very same declaration through Ray, exported on the node's metrics port.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

from services import metrics
from services.train_metrics import TrainMetrics


def _ray_page(url: str, wanted: str) -> str:
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        if wanted in text:
            break
        time.sleep(0.5)
    return text


def test_driver_keeps_its_own_page_and_workers_export_through_ray(ray_cluster: Any) -> None:
    import ray

    assert ray.is_initialized() and not metrics.in_ray_worker()
    TrainMetrics.world_size.set(6, {"worker": "9001"})  # in the driver, after ray.init
    assert metrics.REGISTRY.get_sample_value("seer_train_world_size", {"worker": "9001"}) == 6

    @ray.remote(num_cpus=0)
    def in_a_worker() -> bool:
        from services import metrics as worker_metrics
        from services.train_metrics import TrainMetrics as WorkerTrainMetrics

        WorkerTrainMetrics.world_size.set(5, {"worker": "9002"})
        return worker_metrics.in_ray_worker()

    assert ray.get(in_a_worker.remote(), timeout=60) is True
    text = _ray_page(ray_cluster.metrics_url, 'worker="9002"')
    lines = [ln for ln in text.splitlines()
             if ln.startswith("ray_seer_train_world_size{") and 'worker="9002"' in ln]
    assert lines and float(lines[0].rsplit(" ", 1)[1]) == 5
    assert 'worker="9001"' not in text  # the driver's value stayed on the driver's page
