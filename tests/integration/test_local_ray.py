"""services.local_ray: a local Ray (what `make run` starts) lives on loopback only.

The session's ``ray_cluster`` is started by :func:`services.local_ray.start_local_ray`, the same
function `seer pretrain` uses on a laptop, so these tests check what a local run exposes.
"""

from __future__ import annotations

import ipaddress
import os

import psutil

from tests.integration.conftest import ray_pids


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def test_local_ray_node_and_workers_are_on_loopback(ray_cluster) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def worker_ip() -> str:
        return ray.util.get_node_ip_address()

    assert ray_cluster.address.startswith("127.0.0.1:")
    assert [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]] == ["127.0.0.1"]
    assert ray.get(worker_ip.remote(), timeout=60) == "127.0.0.1"


def test_every_listening_socket_of_local_ray_is_loopback(ray_cluster) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def touch() -> int:
        return os.getpid()

    ray.get(touch.remote(), timeout=60)  # at least one worker process is up and listening
    pids = ray_pids() | {os.getpid()}
    listening = [
        (conn.pid, conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections("inet")
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids
    ]
    ports = {port for _, _, port in listening}
    assert ray_cluster.metrics_export_port in ports, "the metrics export port is not listening"
    exposed = [entry for entry in listening if not _is_loopback(entry[1])]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
