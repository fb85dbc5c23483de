"""services.driver.local_ray: a local Ray (what `make run` starts) lives on loopback only.

The session's ``ray_cluster`` is started by :func:`services.driver.local_ray.start_local_ray`,
the same function `seer pretrain` uses on a laptop, so these tests check what a local run exposes:
Ray's own processes, and the Ray Train workers of a 2-worker run while it trains (their
process group's rendezvous store listened on every interface).
"""

from __future__ import annotations

import io
import ipaddress
import os
import threading
from pathlib import Path

import psutil

from seer_core.config import load_config
from services.driver.pretrain import PretrainOutcome, run_pretraining
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


def _listening(pids: set[int]) -> set[tuple[int, str, int]]:
    return {
        (conn.pid, conn.laddr.ip, conn.laddr.port)
        for conn in psutil.net_connections("inet")
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids
    }


def _train_worker_pids(pids: set[int]) -> set[int]:
    found = set()
    for pid in pids:
        try:
            if "RayTrainWorker" in " ".join(psutil.Process(pid).cmdline()):
                found.add(pid)
        except psutil.Error:
            pass
    return found


def test_every_listening_socket_of_a_local_run_is_loopback(ray_cluster, tmp_path: Path) -> None:
    """Sampled from start to end of a 2-worker training run (synthetic batches: the stream's
    processes are Ray workers like the others), plus a plain task."""
    import ray

    @ray.remote(num_cpus=0)
    def touch() -> int:
        return os.getpid()

    ray.get(touch.remote(), timeout=60)  # at least one worker process is up and listening
    cfg = load_config("local", [
        "model.trunk=tiny", "model.head_hidden=[32]", "model.head_out=16",
        "model.prototypes=32", "augment.global_size=32", "augment.local_size=16",
        "train.batch_size=4", "train.num_workers=2", "train.torch_threads=1",
        "train.cpus_per_worker=0.5", "swav.queue_length=0", f"checkpoint.storage={tmp_path}",
        "checkpoint.run_name=sockets", "checkpoint.every_steps=1000",
        "checkpoint.every_minutes=0", "metrics.status_port=0", "train.max_steps=20",
    ])
    outcome: list[PretrainOutcome] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(run_pretraining(cfg, synthetic=True, install_signals=False,
                                           out=io.StringIO()))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    listening: set[tuple[int, str, int]] = set()
    train_workers: set[int] = set()
    while thread.is_alive():
        pids = ray_pids() | {os.getpid()}
        train_workers |= _train_worker_pids(pids)
        listening |= _listening(pids)
        thread.join(timeout=0.25)
    assert not errors, errors
    assert outcome and outcome[0].step == 20
    listening |= _listening(ray_pids() | {os.getpid()})

    ports = {port for _, _, port in listening}
    assert ray_cluster.metrics_export_port in ports, "the metrics export port is not listening"
    # >= 2: a Train worker of an earlier test of the session may still be exiting.
    assert len(train_workers & {pid for pid, _, _ in listening}) >= 2, (
        "the two Train workers' sockets were not listed", train_workers, listening)
    exposed = sorted(entry for entry in listening if not _is_loopback(entry[1]))
    assert not exposed, f"a local run listens beyond loopback (pid, address, port): {exposed}"
