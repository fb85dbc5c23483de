"""The package layout reads one way: no import circle between modules, no sibling's private names.

Read from the source (AST), not by importing: a late import inside a function is as much a
back-edge as one at the top, and importing would hide it behind whatever loaded first.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "seer_core", "benchmarks")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for each project import in one module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names
                      if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            module = f"{base}.{node.module}" if node.level else node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, "", node.lineno))
                elif module in modules:
                    found.append((module, alias.name, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in its body), less its own package's
    ``__init__`` (importing a submodule runs that anyway: it is no circle of the code's)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {module for module, _, _ in _imports(name, path, modules)}
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_feed_base_imports_no_concrete_feed() -> None:
    """The interface module is the bottom of the feed package: the concrete feeds build on it,
    and the factory that picks one for a spec sits above them (``services.feed.open``)."""
    concrete = {"services.feed.s3", "services.feed.manifest", "services.feed.directory",
                "services.feed.pooled", "services.feed.open"}
    assert not _graph()["services.feed.base"] & concrete


def test_services_have_no_import_circle() -> None:
    """Two modules that import each other (even late, inside a function) are one concern split
    in two, or a factory in the wrong place."""
    graph = {name: targets for name, targets in _graph().items() if name.startswith("services")}
    assert _circles(graph) == []


def test_no_module_imports_a_private_name_of_another() -> None:
    """A leading underscore says "only this module uses it": one that another module needs is
    shared, and is named so."""
    modules = _modules()
    offenders = [
        f"{name}:{line} imports {module}.{imported}"
        for name, path in modules.items()
        for module, imported, line in _imports(name, path, modules)
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert offenders == []


def _private_members(tree: ast.AST) -> set[str]:
    """Private methods and ``self._x`` attributes a module's classes define."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            names |= {item.name for item in node.body
                      if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)}
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id == "self"):
            names.add(node.attr)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def test_no_module_reaches_into_another_modules_private_members() -> None:
    """``other._count(...)`` on an object of a class defined elsewhere is the attribute form of
    importing a private name: a helper that needs it makes it part of the class's interface.
    (Private members of torch or Ray that the project itself does not define are out of scope.)"""
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in _modules().items()}
    defined = {name: _private_members(tree) for name, tree in trees.items()}
    offenders = []
    for name, tree in trees.items():
        elsewhere = set().union(*(d for other, d in defined.items() if other != name))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or node.attr not in elsewhere - defined[name]:
                continue
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                offenders.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


def _layout_section() -> str:
    return (ROOT / "README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def _layout_rows() -> dict[str, str]:
    """The README's Layout table: folder -> what lives there."""
    return {line.split("|")[1].strip().strip("`"): line.split("|")[2]
            for line in _layout_section().splitlines() if line.startswith("| `")}


def test_readme_layout_table_names_every_package() -> None:
    """The README's Layout table (folder -> what lives there) matches the tree: every top-level
    folder and every subpackage of services/ and seer_core/ has its row, and no row names a
    folder that is gone."""
    folders = {f"{top}/" for top in ("seer_core", "services", "deploy", "docker", "k8s",
                                     "benchmarks", "tests")}
    folders |= {f"{init.parent.relative_to(ROOT)}/" for package in ("services", "seer_core")
                for init in (ROOT / package).glob("*/__init__.py")}
    assert set(_layout_rows()) == folders


def test_readme_layout_names_only_modules_that_exist() -> None:
    """Every module the Layout section names (``name.py`` in a folder's row, or a path in the
    journey) exists, and the rows of services/ and seer_core/ name each top-level module: a
    module moved or added shows up in the table."""
    rows = _layout_rows()
    named = {(ROOT / name if "/" in name else ROOT / folder / name)
             for folder, text in rows.items() for name in re.findall(r"`([\w/.]+\.py)`", text)}
    journey = _layout_section().split("\n| ", 1)[0]
    paths = {ROOT / path for path in re.findall(r"`((?:services|seer_core)/[\w/.]*)`", journey)}
    assert sorted(str(p.relative_to(ROOT)) for p in named | paths if not p.exists()) == []
    for package in ("services", "seer_core"):
        listed = set(re.findall(r"`(\w+\.py)`", rows[f"{package}/"]))
        modules = {p.name for p in (ROOT / package).glob("*.py") if p.name != "__init__.py"}
        assert listed == modules, package
