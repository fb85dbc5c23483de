"""Named presets (YAML files in deploy/configs/), config files and `--set key=value` overrides."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from seer_core.config.schema import ConfigError, SeerConfig, config_from_dict

PRESETS_DIR_ENV = "SEER_PRESETS_DIR"
"""Environment variable pointing at a directory of preset YAML files (overrides the default)."""


def presets_dir() -> Path:
    """Where named presets live: $SEER_PRESETS_DIR, else the repo's deploy/configs."""
    default = Path(__file__).resolve().parents[2] / "deploy" / "configs"
    return Path(os.environ.get(PRESETS_DIR_ENV) or default)


def preset_names() -> list[str]:
    directory = presets_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Splits `a.b=value` and parses the value as YAML (so `true`, `3`, `[1, 2]` work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.max_steps=100")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def merge_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def load_config(name_or_path: str = "local", overrides: Iterable[str] = ()) -> SeerConfig:
    """Loads a preset by name or a YAML file by path, applies `key=value` overrides, validates."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = _read_yaml(path)
    else:
        candidate = presets_dir() / f"{name_or_path}.yaml"
        if not candidate.is_file():
            raise ConfigError(
                f"unknown preset {name_or_path!r}; allowed presets: "
                + (", ".join(preset_names()) or "(none found)")
                + " — or give a path to a YAML file"
            )
        data = _read_yaml(candidate)
    for text in overrides:
        merge_override(data, *parse_override(text))
    return config_from_dict(data)
