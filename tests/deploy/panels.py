"""The dashboards' PromQL, as tests run it: every panel target, with Grafana's variables filled."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"


@cache
def generator() -> ModuleType:
    """deploy/dashboards.py (a script, not a package) loaded as a module."""
    spec = importlib.util.spec_from_file_location("seer_dashboards", REPO / "deploy/dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) for every target of every committed dashboard."""
    out = []
    for path in sorted(GRAFANA.glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel["targets"]:
                out.append((dash["uid"], panel["title"], target["expr"]))
    return out


def core_titles() -> set[tuple[str, str]]:
    """(uid, title) of the panels a short local run must fill (the generator's `core`)."""
    return {(d.uid, p.title) for d in generator().dashboards() for p in d.panels if p.core}


def fill_variables(expr: str, rate_window: str = "30s") -> str:
    """Grafana's built-in interval variables replaced the way Grafana would, for Prometheus."""
    return re.sub(r"\$__rate_interval|\$__interval|\$__range", rate_window, expr)
