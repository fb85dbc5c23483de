"""services.local_ray: the session's local Ray lives on loopback, workers included."""

from __future__ import annotations


def test_local_ray_node_and_workers_are_on_loopback(ray_cluster) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def worker_ip() -> str:
        return ray.util.get_node_ip_address()

    assert ray_cluster.address.startswith("127.0.0.1:")
    assert [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]] == ["127.0.0.1"]
    assert ray.get(worker_ip.remote(), timeout=60) == "127.0.0.1"
