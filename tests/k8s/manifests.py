"""Rendering the kustomize overlays and validating custom resources against their CRDs, offline.

The CRD schemas (KubeRay, prometheus-operator) live in `../shared/k8s-schemas/`. They leave
unknown fields alone (the API server would prune them silently: a typo such as `backofLimit`
would just vanish), so `strict_schema` adds `additionalProperties: false` wherever a schema lists
its properties and does not allow unknown ones, turning every unknown field into an error.
"""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
#: The shared CRD schemas beside the checkout (`../shared/k8s-schemas`), or $SEER_K8S_SCHEMAS.
SCHEMAS = Path(os.environ.get("SEER_K8S_SCHEMAS") or REPO.parent / "shared" / "k8s-schemas")

#: What users apply (README), plus the base that they build on.
OVERLAYS = ("base", "overlays/dev", "overlays/dev/cluster", "overlays/prod",
            "overlays/prod/cluster")

CRD_KINDS = {"RayCluster", "RayJob", "RayCronJob", "PodMonitor", "ServiceMonitor",
             "PrometheusRule"}


def render(kubectl: str, overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize k8s/<overlay>` as a list of documents."""
    done = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"kustomize {overlay} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def strict_schema(schema: Any) -> Any:
    """A copy of an openAPIV3Schema in which unknown fields are errors (see the module doc).

    `x-kubernetes-preserve-unknown-fields` keeps a node open; `x-kubernetes-int-or-string`
    becomes integer-or-string; `nullable` adds null to the type.
    """
    node = copy.deepcopy(schema)

    def walk(s: Any) -> None:
        if isinstance(s, list):
            for item in s:
                walk(item)
            return
        if not isinstance(s, dict):
            return
        if s.get("x-kubernetes-int-or-string") and "anyOf" not in s:
            s.pop("type", None)
            s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if s.get("nullable") and isinstance(s.get("type"), str):
            s["type"] = [s["type"], "null"]
        if ("properties" in s and "additionalProperties" not in s
                and not s.get("x-kubernetes-preserve-unknown-fields")):
            s["additionalProperties"] = False
        for key, value in s.items():
            if key == "properties" and isinstance(value, dict):
                for sub in value.values():
                    walk(sub)
            elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
                walk(value)

    walk(node)
    return node


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict openAPIV3Schema, for every CRD file in the schema folder.

    Skips the calling test, with one line saying where the schemas were looked for, when the
    folder is not there (a checkout without `../shared`): nothing can be validated then.
    """
    if not any(SCHEMAS.glob("*.yaml")):
        import pytest

        pytest.skip(f"CRD schemas not found in {SCHEMAS}: put the shared k8s-schemas folder "
                    "beside the checkout or set SEER_K8S_SCHEMAS")
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            out[(f"{group}/{version['name']}", kind)] = strict_schema(schema)
    return out


def containers(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container (and init container) anywhere in a document, with where it was found."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else key
            if key in ("containers", "initContainers") and isinstance(value, list):
                for item in value:
                    yield f"{here}[{item.get('name')}]", item
            else:
                yield from containers(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from containers(item, f"{path}[{i}]")


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def cluster_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every Ray cluster spec: a RayCluster's spec and a RayJob's rayClusterSpec."""
    specs = [(f"RayCluster/{d['metadata']['name']}", d["spec"])
             for d in by_kind(docs, "RayCluster")]
    specs += [(f"RayJob/{d['metadata']['name']}", d["spec"]["rayClusterSpec"])
              for d in by_kind(docs, "RayJob")]
    return specs
