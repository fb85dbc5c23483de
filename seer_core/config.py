"""The one typed configuration schema of seer, its named presets, YAML loading and validation.

Every knob lives here, with a default that runs on a laptop (the embedded default), so that a
run is fully described by one object that is validated once, before any worker starts, and
stored in every checkpoint. Errors name the dotted key and what is allowed, because the user
usually typed it in a `--set key=value` on a long command line.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PRESETS_DIR_ENV = "SEER_PRESETS_DIR"
"""Environment variable pointing at a directory of preset YAML files (overrides the default)."""


class ConfigError(ValueError):
    """A configuration value or key is not allowed; the message names the key."""


def _check(
    *, ge: float | None = None, gt: float | None = None, le: float | None = None
) -> dict[str, float | None]:
    return {"ge": ge, "gt": gt, "le": le}


def knob(default: Any = None, *, factory: Any = None, help: str = "", **bounds: Any) -> Any:
    """A dataclass field carrying its help text and numeric bounds for validation."""
    meta = {"help": help, **_check(**bounds)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    trunk: str = knob("regnety_400mf", help="trunk name, see `seer models`")
    head_hidden: list[int] = knob(factory=lambda: [2048], help="hidden widths of the SwAV MLP")
    head_out: int = knob(128, ge=1, help="embedding width")
    head_batchnorm: bool = knob(True, help="BatchNorm in the head (SwAV: yes, SEER: no)")
    prototypes: list[int] = knob(
        factory=lambda: [3000], help="prototypes per head (several heads allowed)"
    )
    activation_checkpointing: bool = knob(False, help="recompute trunk stages in backward")
    sync_bn_group_size: int = knob(
        0, ge=-1, help="SyncBatchNorm group size: 0 off, -1 all ranks, N consecutive ranks"
    )
    channels_last: bool = knob(True, help="channels-last memory format for the trunk")


@dataclass
class SwAVConfig:
    temperature: float = knob(0.1, gt=0, help="softmax temperature tau")
    epsilon: float = knob(0.05, gt=0, help="Sinkhorn entropic regularisation")
    sinkhorn_iterations: int = knob(3, ge=1)
    crops_for_assign: list[int] = knob(factory=lambda: [0, 1], help="crops whose codes are used")
    freeze_prototypes_steps: int = knob(300, ge=0, help="prototype gradients dropped until then")
    queue_length: int = knob(0, ge=0, help="embedding queue length over all ranks (0: none)")
    queue_start_step: int = knob(0, ge=0, help="step from which the queue is filled")
    global_local_alpha: float | None = knob(
        None, ge=0, le=1, help="SSLight loss rebalancing alpha (None: original SwAV loss)"
    )


@dataclass
class AugmentConfig:
    recipe: str = knob("seer", help="multi-crop recipe: seer, swav, sslight")
    global_size: int | None = knob(None, ge=8, help="override the global crop size")
    local_size: int | None = knob(None, ge=8, help="override the local crop size")
    n_global: int | None = knob(None, ge=1, help="override the number of global crops")
    n_local: int | None = knob(None, ge=0, help="override the number of local crops")
    global_scale: list[float] | None = knob(None, help="override (min, max) global crop scale")
    local_scale: list[float] | None = knob(None, help="override (min, max) local crop scale")
    photometric_on_device: bool = knob(
        False, help="colour jitter/grayscale/blur on the trainer's device instead of ingest"
    )
    max_pixels: int = knob(64_000_000, ge=1, help="decompression-bomb guard (header pixels)")
    min_side: int = knob(32, ge=1, help="images with a smaller side are skipped")

    def overrides(self) -> dict[str, Any]:
        """The recipe overrides that are set, as `build_multicrop` keyword arguments."""
        names = ("global_size", "local_size", "n_global", "n_local", "global_scale", "local_scale")
        out: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name)
            if value is not None:
                out[name] = tuple(value) if isinstance(value, list) else value
        return out


@dataclass
class OptimConfig:
    lr: float = knob(0.3, gt=0, help="base LR for a global batch of `lr_reference_batch`")
    lr_reference_batch: int = knob(
        256, ge=0, help="LR scales linearly with global batch / this (0: no scaling)"
    )
    weight_decay: float = knob(1e-6, ge=0)
    momentum: float = knob(0.9, ge=0, le=1)
    eta: float = knob(0.001, gt=0, help="LARS trust coefficient")
    exclude_bias_and_norm: bool = knob(True, help="no LARS adaptation/decay on biases and norms")
    clip: bool = knob(False, help="LARC clipping of the local LR at the global LR")


@dataclass
class ScheduleConfig:
    name: Literal["plateau_halving", "warmup_cosine", "constant"] = knob(
        "plateau_halving", help="fixed-then-halve for online runs"
    )
    warmup_steps: int = knob(500, ge=0)
    start_lr: float = knob(0.0, ge=0, help="LR at step 0 of the warmup, as a fraction of lr")
    patience: int = knob(2000, ge=1, help="plateau: steps without improvement before halving")
    min_delta: float = knob(0.005, ge=0, help="plateau: relative improvement that counts")
    smoothing: float = knob(0.99, ge=0, le=0.9999, help="plateau: EMA factor of the loss")
    cooldown: int = knob(1000, ge=0, help="plateau: steps after a halving with no decision")
    factor: float = knob(0.5, gt=0, le=1, help="plateau: LR multiplier at each decision")
    min_lr: float = knob(0.0, ge=0, help="floor, as a fraction of lr")
    cosine_steps: int = knob(100_000, ge=1, help="cosine: length of the decay after warmup")
    final_lr: float = knob(0.0, ge=0, help="cosine: final LR, as a fraction of lr")


@dataclass
class TrainConfig:
    batch_size: int = knob(16, ge=1, help="images per worker per step")
    num_workers: int = knob(1, ge=1, help="Ray Train workers (one per GPU on a cluster)")
    use_gpu: bool = knob(False)
    cpus_per_worker: float = knob(1.0, gt=0)
    amp: Literal["auto", "off", "bf16", "fp16"] = knob(
        "auto", help="auto: bf16 where supported, fp16 with a grad scaler on older GPUs"
    )
    max_steps: int = knob(0, ge=0, help="stop after this step (0: never)")
    max_minutes: float = knob(0.0, ge=0, help="stop after this many minutes (0: never)")
    log_every_steps: int = knob(10, ge=1)
    seed: int = knob(0, ge=0)
    max_bad_steps: int = knob(
        3, ge=1, help="consecutive non-finite losses before rolling back to a checkpoint"
    )
    torch_threads: int = knob(0, ge=0, help="intra-op threads per worker (0: torch default)")
    collective_timeout_s: float = knob(1800.0, gt=0, help="DDP collective timeout")


@dataclass
class FeedConfig:
    uri: str = knob("runs/sample-images", help="s3://bucket/prefix, a manifest file, or a folder")
    kind: Literal["auto", "directory", "s3", "manifest"] = knob("auto")
    endpoint_url: str | None = knob(None, help="S3 endpoint (MinIO, Ceph...); no credentials here")
    region: str | None = knob(None)
    pool_size: int = knob(100_000, ge=1, help="keys kept in the random sampling pool")
    refresh_seconds: float = knob(300.0, gt=0, help="how often the key pool is refreshed")
    manifest_column: str = knob("key")
    manifest_base: str | None = knob(None, help="prefix for relative keys in a manifest")
    extensions: list[str] = knob(
        factory=lambda: [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"],
        help="object name endings sampled from folders and buckets ([] = any)",
    )
    fetch_timeout_s: float = knob(30.0, gt=0)
    retry_budget_s: float = knob(120.0, gt=0, help="total time a fetch may spend retrying")
    max_attempts: int = knob(8, ge=1, help="fetch attempts within the retry budget")


@dataclass
class IngestConfig:
    compute: Literal["actors", "tasks"] = knob(
        "tasks",
        help="decode + multi-crop in a Ray actor pool (re-created every pass: use with passes "
        "of a minute or more) or in Ray tasks (worker processes survive between passes)",
    )
    actors_min: int = knob(1, ge=1, help="ingest (decode + multi-crop) actor pool minimum")
    actors_max: int = knob(2, ge=1, help="ingest actor pool maximum (tasks: at most at once)")
    fetch_threads: int = knob(8, ge=1, help="concurrent object fetches per read task")
    cpus_per_actor: float = knob(1.0, gt=0)
    read_tasks: int = knob(2, ge=1, help="random-window read tasks per pass")
    window_images: int = knob(256, ge=1, help="images each read task samples per pass")
    read_task_cpus: float = knob(0.25, gt=0)
    max_object_bytes: int = knob(32 * 1024 * 1024, ge=1, help="larger objects are skipped")
    prefetch_batches: int = knob(2, ge=0)
    target_max_block_mb: int = knob(16, ge=1, help="Ray Data block size cap")


@dataclass
class CheckpointConfig:
    storage: str = knob("runs", help="a folder or s3://bucket/prefix")
    endpoint_url: str | None = knob(None, help="S3 endpoint for the checkpoint store")
    run_name: str = knob("seer-local", help="rerun with the same name to resume")
    every_steps: int = knob(500, ge=1)
    every_minutes: float = knob(30.0, ge=0, help="also checkpoint after this long (0: off)")
    keep: int = knob(3, ge=1, help="newest checkpoints kept")


@dataclass
class MetricsConfig:
    enabled: bool = knob(True)
    export_port: int = knob(8080, ge=0, le=65535, help="Ray's metrics export port (local Ray)")
    status_port: int = knob(9100, ge=0, le=65535, help="the CLI's own /metrics page (0: off)")


@dataclass
class SeerConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    swav: SwAVConfig = field(default_factory=SwAVConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def global_batch(self) -> int:
        return self.train.batch_size * self.train.num_workers

    def scaled_lr(self) -> float:
        """The base LR after linear scaling with the global batch (SwAV/SEER convention)."""
        ref = self.optim.lr_reference_batch
        return self.optim.lr * (self.global_batch() / ref if ref else 1.0)


# --------------------------------------------------------------------------------------------
# Building and validating from plain data


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


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
    from seer_core.augment import RECIPES
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
    for name in ("global_scale", "local_scale"):
        scale = getattr(cfg.augment, name)
        if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1):
            raise ConfigError(
                f"augment.{name}: {scale!r} must be [min, max] with 0 < min <= max <= 1"
            )
    recipe = RECIPES[cfg.augment.recipe]
    n_global = cfg.augment.n_global if cfg.augment.n_global is not None else recipe.n_global
    n_crops = n_global + (
        cfg.augment.n_local
        if cfg.augment.n_local is not None
        else recipe.n_crops - recipe.n_global
    )
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
    if cfg.swav.queue_length % cfg.train.num_workers:
        raise ConfigError(
            f"swav.queue_length: {cfg.swav.queue_length} must be a multiple of "
            f"train.num_workers ({cfg.train.num_workers})"
        )
    if cfg.swav.queue_length and cfg.swav.queue_length // cfg.train.num_workers < (
        cfg.train.batch_size
    ):
        raise ConfigError(
            "swav.queue_length: per-worker length must be at least train.batch_size"
        )
    if cfg.ingest.actors_max < cfg.ingest.actors_min:
        raise ConfigError(
            f"ingest.actors_max: {cfg.ingest.actors_max} must be >= ingest.actors_min "
            f"({cfg.ingest.actors_min})"
        )
    if cfg.train.amp == "fp16" and not cfg.train.use_gpu:
        raise ConfigError("train.amp: 'fp16' needs train.use_gpu: true; allowed on CPU: auto, "
                          "off, bf16")


def config_from_dict(data: Mapping[str, Any] | None) -> SeerConfig:
    """Builds and fully validates a config from plain data (a YAML document, a checkpoint)."""
    cfg = _build(SeerConfig, data or {}, "")
    _validate_cross(cfg)
    return cfg


# --------------------------------------------------------------------------------------------
# Presets, files and `--set key=value`


def presets_dir() -> Path:
    """Where named presets live: $SEER_PRESETS_DIR, else the repo's deploy/configs."""
    env = os.environ.get(PRESETS_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "deploy" / "configs"


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
