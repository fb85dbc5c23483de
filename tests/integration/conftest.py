"""Integration fixtures: one local Ray cluster for the whole test session.

- ``ray_cluster`` (session): ``ray.init(num_cpus=4)`` on 127.0.0.1 with the dashboard off,
  ``RAY_AUTH_MODE=disabled``, and the dummy AWS environment of ``tests/conftest.py`` in place
  *before* Ray starts (Ray worker processes inherit the environment of the raylet, so variables
  set later never reach read tasks or actors). It yields a :class:`RayCluster` whose
  ``metrics_export_port`` / ``metrics_url`` is Ray's Prometheus endpoint: scrape it to check
  ``ray_seer_*`` metrics (Ray adds the ``ray_`` prefix). Metrics are reported every second.
  At teardown Ray is shut down and every process it started is checked to be gone (killed and
  reported as an error otherwise), so no Ray process outlives the session.

Ray costs seconds to start on a 2-core machine: request this fixture only in tests that need it,
and keep those few and short.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

RAY_ENV = {
    # Ray >= 2.59 would otherwise write ~/.ray/auth_token and require it.
    "RAY_AUTH_MODE": "disabled",
    # Progress bars of every Ray Data pass would flood the test log.
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # No usage-stats prompt or upload attempt (no internet here, and none wanted in tests).
    "RAY_USAGE_STATS_ENABLED": "0",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RayCluster:
    """What tests need to know about the session's Ray cluster."""

    metrics_export_port: int
    num_cpus: int
    address: str

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_export_port}/metrics"


def ray_pids() -> set[int]:
    """PIDs of every process of the local Ray node (GCS, raylet, agents, workers)."""
    import psutil
    import ray

    node = ray._private.worker._global_node
    roots: set[int] = set()
    if node is not None:
        for infos in node.all_processes.values():
            for info in infos:
                if info.process is not None:
                    roots.add(info.process.pid)
    pids = set(roots)
    for pid in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
    pids.discard(os.getpid())
    return pids


@pytest.fixture(scope="session")
def ray_cluster(aws_test_env: dict[str, str]) -> Iterator[RayCluster]:
    """A local Ray cluster for the session (see the module docstring)."""
    import psutil
    import ray

    from services.driver.local_ray import start_local_ray

    mp = pytest.MonkeyPatch()
    for name, value in RAY_ENV.items():
        mp.setenv(name, value)
    port = _free_port()
    num_cpus = 4
    info = start_local_ray(
        num_cpus=num_cpus,
        include_dashboard=False,
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 1000},
        log_to_driver=False,
        logging_level="WARNING",
    )
    try:
        pids = ray_pids()
        yield RayCluster(
            metrics_export_port=port, num_cpus=num_cpus, address=info["address"]
        )
        pids |= ray_pids()
    finally:
        ray.shutdown()
        mp.undo()
    deadline = time.monotonic() + 60  # a loaded 2-core machine reaps slowly
    alive: list[psutil.Process] = []
    while True:
        alive = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if alive:
        names = [f"{p.pid}:{p.name()}" for p in alive]
        for proc in alive:
            proc.kill()
        raise AssertionError(f"Ray processes outlived ray.shutdown(): {names}")
