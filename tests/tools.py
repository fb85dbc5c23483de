"""External tools the deployment tests need (kubectl with kustomize, Prometheus, promtool).

Each check skips with one line naming what to install when its tool is absent, so that `make
test` on a laptop without them still passes; `.ci/run` installs them, so in CI they always run.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess

import pytest

#: kustomize features the overlays use (replacements copying a whole spec, `patches:`).
MIN_KUSTOMIZE = (5, 0)


def require_binary(name: str, package: str) -> str:
    """The path of `name`, or a skip naming the Debian package that provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: install it (apt-get install {package}) to run this check")
    return path


@functools.cache
def _kustomize_version(kubectl: str) -> tuple[int, ...] | None:
    done = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0:
        return None
    found = re.match(r"v?(\d+)\.(\d+)", json.loads(done.stdout).get("kustomizeVersion", ""))
    return tuple(int(x) for x in found.groups()) if found else None


def require_kustomize() -> str:
    """kubectl whose built-in kustomize renders the overlays (v5+), or a one-line skip."""
    kubectl = shutil.which("kubectl")
    version = _kustomize_version(kubectl) if kubectl else None
    if kubectl is None or version is None or version < MIN_KUSTOMIZE:
        pytest.skip("kubectl with kustomize >= v5 not found: install kubectl >= 1.27 to render "
                    "k8s/ (Debian's kubernetes-client is too old)")
    return kubectl


def promtool() -> str:
    return require_binary("promtool", "prometheus")


def prometheus() -> str:
    return require_binary("prometheus", "prometheus")
