"""The torch process group of a worker group: no listening socket beyond loopback on one machine.

Ray Train's ``TorchConfig`` rendezvouses through a ``TCPStore`` that rank 0 binds to every
interface, whatever ``MASTER_ADDR`` says, so a local run (Ray on 127.0.0.1) would expose a port
on the LAN for as long as it trains. When every worker sits on a loopback node, the group here
rendezvouses through a ``FileStore`` (the ranks share the machine's file system) and pins gloo's
and NCCL's sockets to the loopback interface unless the user set ``GLOO_SOCKET_IFNAME`` /
``NCCL_SOCKET_IFNAME`` (gloo otherwise binds to whatever the host name resolves to). On a
cluster (any worker on a routable address) Ray Train's own rendezvous is used unchanged.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

from ray.train.torch import TorchConfig
from ray.train.torch.config import (
    _set_torch_distributed_env_vars,
    _setup_torch_process_group,
    _TorchBackend,
)
from ray.util import get_node_ip_address

log = logging.getLogger("seer.trainer")

def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def loopback_interface() -> str | None:
    """The loopback interface's name (``lo`` on Linux, ``lo0`` on macOS/BSD), if there is one."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in ("lo", "lo0", *names) if n in names and n.startswith("lo")), None)


def _pin_to_loopback() -> None:
    """Runs in each worker before the process group exists (the variables are read then)."""
    name = loopback_interface()
    if name is None:
        return
    for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        os.environ.setdefault(var, name)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose group listens on loopback only when all workers are local."""

    @property
    def backend_cls(self) -> type[_TorchBackend]:
        return _LoopbackTorchBackend


class _LoopbackTorchBackend(_TorchBackend):
    """Ray Train's torch backend, with a FileStore rendezvous for a group on loopback nodes."""

    def __init__(self) -> None:
        super().__init__()
        self._stores: dict[int, str] = {}

    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        addresses = worker_group.execute(get_node_ip_address)
        if not addresses or not all(is_loopback(a) for a in addresses):
            super().on_start(worker_group, backend_config)
            return
        backend = backend_config.backend
        if backend is None:
            gpus = worker_group.get_resources_per_worker().get("GPU", 0)
            backend = "nccl" if gpus > 0 else "gloo"
        # A fresh, empty file for every group start: a FileStore file must not be reused
        # (a killed group leaves its file behind; on_shutdown removes it).
        path = os.path.join(tempfile.gettempdir(), f"seer-pg-{uuid.uuid4().hex}")
        self._stores[id(worker_group)] = path
        worker_group.execute(_pin_to_loopback)
        worker_group.execute(_set_torch_distributed_env_vars)
        import ray

        ray.get([
            worker_group.execute_single_async(
                rank, _setup_torch_process_group, backend=backend, world_rank=rank,
                world_size=len(worker_group), init_method=f"file://{path}",
                timeout_s=backend_config.timeout_s,
            )
            for rank in range(len(worker_group))
        ])

    def on_shutdown(self, worker_group: Any, backend_config: TorchConfig) -> None:
        try:
            super().on_shutdown(worker_group, backend_config)
        finally:
            path = self._stores.pop(id(worker_group), None)
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
