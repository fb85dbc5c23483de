"""docker/Dockerfile, checked without a Docker engine: versions, copied files, user, presets.

No engine runs here, so the image is never built in tests; what can go wrong silently is
checked instead: a Ray/torch bump in pyproject.toml without the image (or the reverse), a
COPY of a file that is missing or excluded by .dockerignore, an image that runs as root, and
presets that a non-editable install would not find.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def args() -> dict[str, str]:
    pairs = [rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest]
    return dict(pairs)


def pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out = {}
    for dep in project["dependencies"]:
        found = re.match(r"([a-zA-Z0-9_-]+)(\[[^\]]*\])?==([^;\s]+)", dep)
        if found:
            out[found.group(1)] = found.group(3)
    return out


def dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(parts[0], p)
               or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns)


def test_versions_match_pyproject() -> None:
    a, p = args(), pins()
    assert a["RAY_VERSION"] == p["ray"]
    assert a["TORCH_VERSION"] == p["torch"] and a["TORCHVISION_VERSION"] == p["torchvision"]
    assert re.fullmatch(r"\d+(\.\d+)+(\.post\d+)?", a["PILLOW_SIMD_VERSION"])  # pinned
    (base,) = [rest for word, rest in instructions() if word == "FROM"]
    assert base == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${FLAVOR}"
    assert a["FLAVOR"] == "cpu"  # gpu by --build-arg; Ray's tags: -cpu, -gpu


def test_python_matches_the_project() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    tag = args()["PYTHON_TAG"]
    assert re.fullmatch(r"py3\d+", tag)
    version = f"3.{tag[3:]}"
    assert version in SpecifierSet(pyproject["project"]["requires-python"])
    assert pyproject["tool"]["ruff"]["target-version"] == tag  # the Python the code targets


def test_copied_files_exist_and_reach_the_build_context() -> None:
    copies = [rest for word, rest in instructions() if word == "COPY"]
    assert copies
    sources = []
    for rest in copies:
        parts = [p for p in rest.split() if not p.startswith("--")]
        sources += parts[:-1]
    for src in sources:
        assert (REPO / src).exists(), src
        assert not dockerignored(src.rstrip("/")), f"{src} is excluded by .dockerignore"
    for needed in ("pyproject.toml", "README.md", "seer_core/", "services/", "deploy/"):
        assert needed in sources
    for heavy in (".venv", "runs", ".git", "tests"):
        assert dockerignored(heavy)


def test_runs_as_the_non_root_ray_user_and_finds_the_presets() -> None:
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users and users[-1] == "ray"
    env = " ".join(rest for word, rest in instructions() if word == "ENV")
    workdir = [rest for word, rest in instructions() if word == "WORKDIR"][-1]
    found = re.search(r"SEER_PRESETS_DIR=(\S+)", env)
    assert found and found.group(1) == f"{workdir}/deploy/configs"
    assert (REPO / "deploy" / "configs" / "seer-rg256.yaml").exists()
