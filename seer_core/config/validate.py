"""The rules between config sections, and building a validated SeerConfig from plain data.

pydantic validates (YAML documents, `--set` values, checkpoints); this turns its first error into
one line that names the dotted key and what is allowed, because the user usually typed it in a
`--set key=value` on a long command line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from seer_core.bounds import bound_message
from seer_core.config.endpoints import credentials_message, has_credentials
from seer_core.config.schema import ConfigError, SeerConfig


def check_across_sections(cfg: SeerConfig) -> None:
    """SeerConfig's model validator: rules between sections, and the registries of trunks and
    recipes (imported here, late: they import torch)."""
    for section in SeerConfig.model_fields:
        for name, value in getattr(cfg, section):
            if name.endswith("endpoint_url") and value and has_credentials(value):
                raise ConfigError(credentials_message(f"{section}.{name}"))
    from seer_core.augment import RECIPES, resolve_recipe
    from seer_core.models import TRUNK_NAMES

    if cfg.model.trunk not in TRUNK_NAMES:
        raise ConfigError(f"model.trunk: {cfg.model.trunk!r} is not a known trunk; allowed: "
                          + ", ".join(TRUNK_NAMES))
    if cfg.augment.recipe not in RECIPES:
        raise ConfigError(f"augment.recipe: {cfg.augment.recipe!r} is not allowed; allowed: "
                          + ", ".join(RECIPES))
    try:
        recipe = resolve_recipe(cfg.augment.recipe, cfg.augment.overrides())
    except ValueError as exc:
        raise ConfigError(f"augment: {exc}") from exc
    assign, n_crops = cfg.swav.crops_for_assign, recipe.n_crops
    if not assign or len(set(assign)) != len(assign) or any(not 0 <= a < n_crops for a in assign):
        raise ConfigError(f"swav.crops_for_assign: {assign!r} must be distinct crop indices in "
                          f"[0, {n_crops})")
    if cfg.swav.global_local_alpha is not None and any(a >= recipe.n_global for a in assign):
        raise ConfigError("swav.crops_for_assign: with swav.global_local_alpha every assigned "
                          f"crop must be a global crop (index < {recipe.n_global})")
    _check_workers(cfg)


def _check_workers(cfg: SeerConfig) -> None:
    """The SwAV queue is split over whatever world size the (elastic) group has, so it must
    divide evenly for every one of them; SyncBatchNorm needs GPUs as soon as there are two."""
    train, queue = cfg.train, cfg.swav.queue_length
    uneven = [w for w in range(train.min_workers, train.max_workers + 1) if queue % w]
    if uneven:
        raise ConfigError(f"swav.queue_length: {queue} must be a multiple of every world size "
                          f"train.num_workers allows ({train.num_workers}); it is not of {uneven}")
    if queue and queue // train.max_workers < train.batch_size:
        raise ConfigError("swav.queue_length: per-worker length must be at least "
                          "train.batch_size")
    if cfg.model.sync_bn_group_size and train.max_workers > 1 and not train.use_gpu:
        # torch's SyncBatchNorm raises ValueError on CPU tensors in training (torch 2.x: cuda,
        # xpu, hpu only), so every worker would fail at its first step and the group restart for
        # ever. A single worker never converts (a world of one): that stays allowed.
        raise ConfigError(
            f"model.sync_bn_group_size: {cfg.model.sync_bn_group_size} (SyncBatchNorm) needs GPUs "
            f"with train.num_workers {train.num_workers} > 1; with train.use_gpu: false set "
            "model.sync_bn_group_size: 0, train.num_workers: 1, or train.use_gpu: true")


_NOT_A = {"int_type": "an integer", "float_type": "a number", "string_type": "a string",
          "bool_type": "a boolean (true or false)", "list_type": "a list",
          "finite_number": "a finite number"}


def _where(loc: tuple[str | int, ...]) -> tuple[str, str, type[BaseModel] | None]:
    """The dotted key of `loc`, the same with list indices (`eval.protocols[1]`), and the section
    the key ends in (None below a section's key). A union's member name is no part of a key."""
    key, item, model = "", "", SeerConfig
    for part in loc:
        if isinstance(part, int):
            item += f"[{part}]"
        elif model is not None and part in model.model_fields:
            key = item = f"{key}.{part}" if key else part
            hint = model.model_fields[part].annotation
            model = hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None
    return key, item, model


def _message(error: Mapping[str, Any]) -> str:
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    if kind == "value_error" and isinstance(ctx.get("error"), ConfigError):
        return str(ctx["error"])  # a rule of a section or between sections: it names its keys
    if kind == "extra_forbidden":
        section, _, model = _where(error["loc"][:-1])
        where = f"{section}." if section else ""
        return (f"unknown key {where}{error['loc'][-1]}; allowed keys"
                f"{' in ' + section if section else ''}: " + ", ".join(model.model_fields))
    key, item, _ = _where(error["loc"])
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", ctx["expected"])
        return f"{item}: {value!r} is not allowed; allowed values: " + ", ".join(allowed)
    if kind in ("model_type", "dict_type"):
        return f"{key or 'config'}: expected a mapping, got {value!r}"
    if kind in _NOT_A:
        return f"{item}: {value!r} is not {_NOT_A[kind]}"
    if kind == "too_short":
        return f"{key}: {value!r} has too few items; allowed: at least {ctx['min_length']}"
    return bound_message(key, error) or f"{item or 'config'}: {value!r}: {error['msg']}"


def config_from_dict(data: Mapping[str, Any] | None) -> SeerConfig:
    """Builds and fully validates a config from plain data (a YAML document, a checkpoint)."""
    try:
        return SeerConfig.model_validate(data or {})
    except ValidationError as exc:
        errors = exc.errors()
        # A union's other members fail on the type; the error worth reading is another one.
        first = next((e for e in errors if e["type"] not in _NOT_A), errors[0])
        raise ConfigError(_message(first)) from None
