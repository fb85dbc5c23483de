"""Building a validated SeerConfig from plain data (YAML documents, `--set` values, checkpoints).

Errors name the dotted key and what is allowed, because the user usually typed it in a
`--set key=value` on a long command line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from seer_core.config.endpoints import credentials_message, has_credentials
from seer_core.config.schema import ConfigError, SeerConfig


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _validate_workers(cfg: SeerConfig) -> None:
    """`train.num_workers`: N, or [min, max] for an elastic group; the SwAV queue is split over
    whatever world size the group has, so it must divide evenly for every one of them."""
    workers = cfg.train.num_workers
    if isinstance(workers, list) and (len(workers) != 2 or workers[0] > workers[1]):
        raise ConfigError(
            f"train.num_workers: {workers!r} must be a number of workers or [min, max] with "
            "min <= max"
        )
    if isinstance(workers, list) and workers[0] == workers[1]:
        cfg.train.num_workers = workers[0]
    sizes = range(cfg.train.min_workers, cfg.train.max_workers + 1)
    uneven = [w for w in sizes if cfg.swav.queue_length % w]
    if uneven:
        raise ConfigError(
            f"swav.queue_length: {cfg.swav.queue_length} must be a multiple of every world size "
            f"train.num_workers allows ({workers}); it is not of {uneven}"
        )
    if cfg.swav.queue_length and cfg.swav.queue_length // cfg.train.max_workers < (
        cfg.train.batch_size
    ):
        raise ConfigError(
            "swav.queue_length: per-worker length must be at least train.batch_size"
        )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Converts YAML/CLI data to the field's type, refusing anything ambiguous."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted `off` / `on` as a boolean
            value = {False: "off", True: "on"}[value]
        if value not in allowed:
            raise ConfigError(
                f"{key}: {value!r} is not allowed; allowed values: "
                + ", ".join(str(a) for a in allowed)
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be empty; expected {_type_name(tp)}")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]  # `prototypes: 3000` means one head
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} is not a boolean (true or false)")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: {value!r} is not an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: {value!r} is not a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: {value!r} is not a string")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - schema bug


def _check_bounds(value: Any, meta: Mapping[str, Any], key: str) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is None or isinstance(v, (bool, str)):
            continue
        if meta.get("ge") is not None and v < meta["ge"]:
            raise ConfigError(f"{key}: {v!r} is too small; allowed: >= {meta['ge']}")
        if meta.get("gt") is not None and v <= meta["gt"]:
            raise ConfigError(f"{key}: {v!r} is too small; allowed: > {meta['gt']}")
        if meta.get("le") is not None and v > meta["le"]:
            raise ConfigError(f"{key}: {v!r} is too large; allowed: <= {meta['le']}")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]}; allowed keys{' in ' + prefix if prefix else ''}: "
            + ", ".join(fields)
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, key)
            continue
        kwargs[name] = _coerce(value, tp, key)
        _check_bounds(kwargs[name], fields[name].metadata, key)
    return cls(**kwargs)


def _validate_cross(cfg: SeerConfig) -> None:
    """Checks that need several keys, or the registries of models and recipes."""
    _validate_endpoints(cfg)
    from seer_core.augment import RECIPES, resolve_recipe
    from seer_core.models import TRUNK_NAMES

    if cfg.model.trunk not in TRUNK_NAMES:
        raise ConfigError(
            f"model.trunk: {cfg.model.trunk!r} is not a known trunk; allowed: "
            + ", ".join(TRUNK_NAMES)
        )
    if cfg.augment.recipe not in RECIPES:
        raise ConfigError(
            f"augment.recipe: {cfg.augment.recipe!r} is not allowed; allowed: "
            + ", ".join(RECIPES)
        )
    if any(p < 1 for p in cfg.model.prototypes) or not cfg.model.prototypes:
        raise ConfigError("model.prototypes: each head needs at least 1 prototype")
    if any(h < 1 for h in cfg.model.head_hidden):
        raise ConfigError("model.head_hidden: widths must be >= 1")
    betas = cfg.optim.betas  # each >= 0 is the schema's bound; here the pair and < 1
    if len(betas) != 2 or any(b >= 1 for b in betas):
        raise ConfigError(f"optim.betas: {betas!r} must be [beta1, beta2] with 0 <= beta < 1")
    for name in ("global_scale", "local_scale"):
        scale = getattr(cfg.augment, name)
        if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1):
            raise ConfigError(
                f"augment.{name}: {scale!r} must be [min, max] with 0 < min <= max <= 1"
            )
    try:
        recipe = resolve_recipe(cfg.augment.recipe, cfg.augment.overrides())
    except ValueError as exc:
        raise ConfigError(f"augment: {exc}") from exc
    n_global, n_crops = recipe.n_global, recipe.n_crops
    assign = cfg.swav.crops_for_assign
    if not assign or len(set(assign)) != len(assign) or any(not 0 <= a < n_crops for a in assign):
        raise ConfigError(
            f"swav.crops_for_assign: {assign!r} must be distinct crop indices in [0, {n_crops})"
        )
    if cfg.swav.global_local_alpha is not None and any(a >= n_global for a in assign):
        raise ConfigError(
            "swav.crops_for_assign: with swav.global_local_alpha every assigned crop must be "
            f"a global crop (index < {n_global})"
        )
    _validate_workers(cfg)
    if cfg.augment.photometric_ramp_steps and not cfg.augment.photometric_on_device:
        raise ConfigError(
            "augment.photometric_ramp_steps: the ramp follows the training step, which only the "
            "trainer knows; set augment.photometric_on_device: true, or the ramp to 0"
        )
    if cfg.optim.name != "lars" and cfg.optim.clip:
        raise ConfigError(
            f"optim.clip: LARC clipping is a LARS option; with optim.name {cfg.optim.name!r} "
            "set it to false"
        )
    if cfg.ingest.target_max_block_mb * 32 > cfg.ingest.object_store_mb:
        raise ConfigError(
            f"ingest.target_max_block_mb: {cfg.ingest.target_max_block_mb} MiB blocks against "
            f"ingest.object_store_mb={cfg.ingest.object_store_mb} would let the endless read "
            f"tasks out-run the trainers; allowed: 1..{cfg.ingest.object_store_mb // 32} (at "
            "most 1/32 of the budget), or raise ingest.object_store_mb"
        )
    _validate_eval(cfg)
    if cfg.model.sync_bn_group_size and cfg.train.max_workers > 1 and not cfg.train.use_gpu:
        # torch's SyncBatchNorm raises ValueError on CPU tensors in training (torch 2.x: cuda,
        # xpu, hpu only), so every worker would fail at its first step and the group restart
        # for ever. A single worker never converts (a world of one): that stays allowed.
        raise ConfigError(
            f"model.sync_bn_group_size: {cfg.model.sync_bn_group_size} (SyncBatchNorm) needs "
            f"GPUs with train.num_workers {cfg.train.num_workers} > 1; with train.use_gpu: "
            "false set model.sync_bn_group_size: 0, train.num_workers: 1, or train.use_gpu: true"
        )
    if cfg.train.amp == "fp16" and not cfg.train.use_gpu:
        raise ConfigError("train.amp: 'fp16' needs train.use_gpu: true; allowed on CPU: auto, "
                          "off, bf16")


def _validate_endpoints(cfg: Any, prefix: str = "") -> None:
    """Every `*endpoint_url` key, in every section (one found by name, so a key added later is
    covered): no credentials in it (seer_core.config.endpoints says why)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _validate_endpoints(value, f"{key}.")
        elif f.name.endswith("endpoint_url") and isinstance(value, str) and has_credentials(
                value):
            raise ConfigError(credentials_message(key))


def _validate_eval(cfg: SeerConfig) -> None:
    """The `eval` section's rules that span list items (each item's type and bounds are
    checked by the schema)."""
    ev = cfg.eval
    for name in ("protocols", "knn_k", "lowshot_fractions", "lowshot_seeds"):
        values = getattr(ev, name)
        if len(set(values)) != len(values):
            raise ConfigError(f"eval.{name}: {values!r} has duplicates")
    if not ev.protocols:
        raise ConfigError("eval.protocols: empty; allowed values: knn, linear, lowshot, finetune")
    if "knn" in ev.protocols and not ev.knn_k:
        raise ConfigError("eval.knn_k: empty; give at least one k (e.g. [20, 200]) for knn")
    if "lowshot" in ev.protocols and not (ev.lowshot_fractions and ev.lowshot_seeds):
        raise ConfigError(
            "eval.lowshot_fractions / eval.lowshot_seeds: lowshot needs at least one of each"
        )
    if not ev.data.strip():
        raise ConfigError("eval.data: empty; give a folder, s3://bucket/prefix or a Parquet file")


def config_from_dict(data: Mapping[str, Any] | None) -> SeerConfig:
    """Builds and fully validates a config from plain data (a YAML document, a checkpoint)."""
    cfg = _build(SeerConfig, data or {}, "")
    _validate_cross(cfg)
    return cfg
