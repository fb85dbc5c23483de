"""A single-machine Ray on the loopback interface, whose processes know its address.

Two Ray defaults are wrong for a laptop run (and for tests); joining a cluster (``ray job
submit``, KubeRay) never comes here:

- **The node address.** Ray (>= 2.5x) replaces ``_node_ip_address="127.0.0.1"`` with the
  machine's routable address, so a "local" instance registers its GCS, raylet, workers and
  metrics port on the LAN for nothing. Ray keeps loopback only when it believes clusters are
  disabled (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by ``services.get_node_ip_address``).
- **Which instance a Ray process talks to.** Code inside Ray's own actors (Ray Train's
  placement-group cleaner, the state API) finds "its" cluster from ``RAY_ADDRESS``, else from
  the newest instance on the machine: with two (a test session and a `make run`) it addresses
  the wrong one or fails. So the GCS port is chosen here and ``RAY_ADDRESS`` names it in the
  environment the new instance's processes inherit; the caller's environment is restored right
  after, so a later `seer pretrain` subprocess still starts its own instance.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

LOOPBACK = "127.0.0.1"
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_GCS_PORT = "RAY_GCS_SERVER_PORT"
_ADDRESS = "RAY_ADDRESS"


class LoopbackError(RuntimeError):
    """Ray started on an address other than loopback (its internals changed under us)."""


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (Ray binds it moments later)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def use_loopback() -> None:
    """Make any Ray started from this process bind its node to 127.0.0.1.

    Safe before or after ``import ray``: the environment reaches Ray's own subprocesses and the
    constant is patched in case ``ray`` was already imported (it is read at import time).
    """
    os.environ[_CLUSTER_SWITCH] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_local_ray(*, dashboard: bool = False, **kwargs: Any) -> dict[str, Any]:
    """``ray.init(address="local", **kwargs)`` on loopback; returns Ray's address info.

    With ``dashboard``, Ray's dashboard runs on a free loopback port (its URL is
    ``address_info["webui_url"]``): Ray's state API goes through it, and Ray Train's
    placement-group cleaner polls that API every few seconds (without it, it logs a failure
    each time and could never clean up).

    Raises:
        LoopbackError: Ray came up on another address anyway; it is shut down first, so a test
            or a laptop run never keeps a node listening on the LAN by accident.
    """
    import ray

    use_loopback()
    gcs_port = free_loopback_port()
    kwargs.setdefault("_node_ip_address", LOOPBACK)
    kwargs["include_dashboard"] = dashboard
    if dashboard:
        kwargs.setdefault("dashboard_host", LOOPBACK)
        kwargs.setdefault("dashboard_port", free_loopback_port())
    with _environment({_GCS_PORT: str(gcs_port), _ADDRESS: f"{LOOPBACK}:{gcs_port}"}):
        ctx = ray.init(address="local", **kwargs)
    info = dict(ctx.address_info)
    node_ip = str(info.get("node_ip_address", ""))
    if node_ip != LOOPBACK or info.get("gcs_address") != f"{LOOPBACK}:{gcs_port}":
        ray.shutdown()
        raise LoopbackError(
            f"local Ray started at {info.get('gcs_address')!r}, not {LOOPBACK}:{gcs_port}: this "
            f"Ray version ignores {_CLUSTER_SWITCH}=0 or {_GCS_PORT}; pass an explicit cluster "
            "address instead"
        )
    return info
