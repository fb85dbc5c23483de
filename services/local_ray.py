"""Start a single-machine Ray instance that lives on the loopback interface only.

Ray (>= 2.5x) replaces ``_node_ip_address="127.0.0.1"`` with the machine's routable address
(``services.resolve_ip_for_localhost``), so a "local" instance would still register its GCS,
raylet and workers on the LAN address and talk to itself through it. On a laptop (and in tests)
nothing but this machine is ever part of the cluster, so that address buys nothing and exposes
the node; Ray keeps loopback only when it believes clusters are disabled
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by ``services.get_node_ip_address``). This module
sets that switch for this process *and* for the processes Ray spawns (they inherit the
environment), then starts Ray. Joining an existing cluster (``ray job submit``, KubeRay) never
goes through here.
"""

from __future__ import annotations

import os
from typing import Any

LOOPBACK = "127.0.0.1"
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class LoopbackError(RuntimeError):
    """Ray started on an address other than loopback (its internals changed under us)."""


def use_loopback() -> None:
    """Make any Ray started from this process bind its node to 127.0.0.1.

    Safe before or after ``import ray``: the environment reaches Ray's own subprocesses and the
    constant is patched in case ``ray`` was already imported (it is read at import time).
    """
    os.environ[_CLUSTER_SWITCH] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def start_local_ray(**kwargs: Any) -> dict[str, Any]:
    """``ray.init(**kwargs)`` for a new local instance on loopback; returns its address info.

    Raises:
        LoopbackError: Ray came up on another address anyway; it is shut down first, so a test
            or a laptop run never keeps a node listening on the LAN by accident.
    """
    import ray

    use_loopback()
    kwargs.setdefault("_node_ip_address", LOOPBACK)
    ctx = ray.init(**kwargs)
    info = dict(ctx.address_info)
    node_ip = str(info.get("node_ip_address", ""))
    if node_ip != LOOPBACK:
        ray.shutdown()
        raise LoopbackError(
            f"local Ray started on {node_ip!r}, not {LOOPBACK}: this Ray version ignores "
            f"{_CLUSTER_SWITCH}=0; pass an explicit cluster address instead"
        )
    return info
