"""The typed configuration schema of seer: every knob, its default, its bounds and its rules.

Defaults run on a laptop (the embedded default). Each key carries its help text and bounds
(pydantic `Field`), so validation, error messages and `seer config --schema` (JSON Schema, for
editors and manifests) all come from here. A section checks the rules between its own keys,
`SeerConfig` those between sections. `config_from_dict` turns pydantic's first error into one
line that names the dotted key and what is allowed: the user usually typed it in a
`--set key=value` on a long command line.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from seer_core.bounds import (
    Count,
    Factor,
    Momentum,
    NonNegative,
    Patience,
    Positive,
    Smoothing,
    bound_message,
)
from seer_core.config.endpoints import credentials_message, has_credentials


class ConfigError(ValueError):
    """A configuration value or key is not allowed; the message names the key."""


PosInt = Annotated[int, Field(ge=1)]
Port = Annotated[int, Field(ge=0, le=65535)]
EvalProtocol = Literal["knn", "linear", "lowshot", "finetune"]
EVAL_PROTOCOLS: tuple[str, ...] = typing.get_args(EvalProtocol)


def _members(hint: Any) -> list[Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


class _Section(BaseModel):
    """A config section: unknown keys are errors and types are strict (`1` is not `true`, nor
    `'3'` or `3.0` an integer; an integer is a number), with two YAML shorthands."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _shorthands(cls, value: Any, info: ValidationInfo) -> Any:
        """`prototypes: 3000` is one head; YAML 1.1 reads an unquoted `amp: off` as false."""
        hint = cls.model_fields[info.field_name].annotation
        kinds = {typing.get_origin(a) for a in _members(hint)}
        if isinstance(value, bool) and kinds == {Literal}:
            return "on" if value else "off"
        if isinstance(value, int | float | str) and not isinstance(value, bool) and kinds == {list}:
            return [value]
        return value


class ModelConfig(_Section):
    trunk: str = Field("regnety_400mf", description="trunk name, see `seer models`")
    head_hidden: list[PosInt] = Field([2048], description="hidden widths of the SwAV MLP")
    head_out: PosInt = Field(128, description="embedding width")
    head_batchnorm: bool = Field(True, description="BatchNorm in the head (SwAV: yes, SEER: no)")
    prototypes: list[PosInt] = Field([3000], min_length=1,
                                     description="prototypes per head (several heads allowed)")
    activation_checkpointing: bool = Field(False, description="recompute trunk stages in backward")
    sync_bn_group_size: int = Field(0, ge=-1, description="SyncBatchNorm group size: 0 off, -1 "
                                    "all ranks, N consecutive ranks")
    channels_last: bool = Field(True, description="channels-last memory format for the trunk")


class SwAVConfig(_Section):
    temperature: Positive = Field(0.1, description="softmax temperature tau")
    epsilon: Positive = Field(0.05, description="Sinkhorn entropic regularisation")
    sinkhorn_iterations: PosInt = 3
    crops_for_assign: list[int] = Field([0, 1], description="crops whose codes are used")
    freeze_prototypes_steps: Count = Field(300, description="prototype gradients dropped until "
                                           "then")
    queue_length: Count = Field(0, description="embedding queue length over all ranks (0: none)")
    queue_start_step: Count = Field(0, description="step from which the queue is filled")
    global_local_alpha: float | None = Field(None, ge=0, le=1, description="SSLight loss "
                                             "rebalancing alpha (None: original SwAV loss)")


class AugmentConfig(_Section):
    recipe: str = Field("seer", description="multi-crop recipe: seer, swav, sslight")
    global_size: int | None = Field(None, ge=8, description="override the global crop size")
    local_size: int | None = Field(None, ge=8, description="override the local crop size")
    n_global: int | None = Field(None, ge=1, description="override the number of global crops")
    n_local: int | None = Field(None, ge=0, description="override the number of local crops")
    global_scale: list[float] | None = Field(None, description="override (min, max) global crop "
                                             "scale")
    local_scale: list[float] | None = Field(None, description="override (min, max) local crop "
                                            "scale")
    photometric_on_device: bool = Field(False, description="colour jitter/grayscale/blur on the "
                                        "trainer's device instead of ingest")
    blur_probability: float = Field(0.5, ge=0, le=1, description="share of crops blurred (SwAV: "
                                    "0.5; destructive at <= 64 px)")
    blur_sigma: list[float] = Field([0.1, 2.0], description="(min, max) blur sigma in pixels "
                                    "of the crop (SwAV's, for 224 px crops: 0.1-2)")
    hue: float = Field(0.2, ge=0, le=0.5, description="largest hue shift of the colour jitter "
                       "(turns; SwAV's 0.2; 0.5: any hue), scaled by colour_strength and the "
                       "ramp like the other jitter factors")
    colour_strength: float = Field(1.0, gt=0, le=1, description="size of the colour jitter and "
                                   "grayscale as a fraction of SwAV's (SimCLR's strength s; the "
                                   "ramp ends here)")
    grain: float = Field(0.0, ge=0, le=0.5, description="largest std of the grey noise added to "
                         "each crop, drawn per crop from 0 to this (pixel values in [0, 1]; 0: "
                         "none); scaled by colour_strength and the ramp; needs "
                         "photometric_on_device")
    photometric_ramp_steps: Count = Field(0, description="colour jitter and grayscale grow from "
                                          "none to full over these steps (0: full from the "
                                          "start; needs photometric_on_device)")
    photometric_ramp_start: float = Field(0.0, ge=0, le=1, description="share of the colour "
                                          "distortion the ramp starts from at step 0 (0: none; "
                                          "1: no ramp)")
    max_pixels: PosInt = Field(64_000_000, description="decompression-bomb guard (header pixels)")
    min_side: PosInt = Field(32, description="images with a smaller side are skipped")

    @model_validator(mode="after")
    def _rules(self) -> AugmentConfig:
        for name in ("global_scale", "local_scale"):
            scale = getattr(self, name)
            if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1):
                raise ConfigError(f"augment.{name}: {scale!r} must be [min, max] with "
                                  "0 < min <= max <= 1")
        sigma = self.blur_sigma
        if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
            raise ConfigError(f"augment.blur_sigma: {sigma!r} must be [min, max] with "
                              "0 < min <= max (pixels)")
        if self.grain and not self.photometric_on_device:
            raise ConfigError(
                "augment.grain: the noise is drawn on the trainer's device only; set "
                "augment.photometric_on_device: true, or augment.grain: 0")
        if self.photometric_ramp_steps and not self.photometric_on_device:
            raise ConfigError(
                "augment.photometric_ramp_steps: the ramp follows the training step, which only "
                "the trainer knows; set augment.photometric_on_device: true, or the ramp to 0")
        return self

    def overrides(self) -> dict[str, Any]:
        """The recipe overrides that are set, as `build_multicrop` keyword arguments."""
        names = ("global_size", "local_size", "n_global", "n_local", "global_scale", "local_scale")
        given = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        return {name: tuple(v) if isinstance(v, list) else v for name, v in given.items()}


class OptimConfig(_Section):
    name: Literal["lars", "adamw"] = Field("lars", description="lars (SwAV/SEER, large batches) "
                                           "or adamw (small batches, short budgets)")
    lr: Positive = Field(0.3, description="base LR for a global batch of `lr_reference_batch`")
    lr_reference_batch: Count = Field(256, description="LR scales linearly with global batch / "
                                      "this (0: no scaling)")
    weight_decay: NonNegative = 1e-6
    momentum: Momentum = Field(0.9, description="LARS momentum (lars only)")
    betas: list[Annotated[float, Field(ge=0)]] = Field(
        [0.9, 0.999], description="AdamW's (beta1, beta2), each < 1 (adamw only)")
    eta: Positive = Field(0.001, description="LARS trust coefficient (lars only)")
    exclude_bias_and_norm: bool = Field(True, description="no LARS adaptation/decay on biases "
                                        "and norms")
    clip: bool = Field(False, description="LARC clipping of the local LR at the global LR (lars "
                       "only)")

    @model_validator(mode="after")
    def _rules(self) -> OptimConfig:
        if len(self.betas) != 2 or any(b >= 1 for b in self.betas):  # >= 0: the item type
            raise ConfigError(f"optim.betas: {self.betas!r} must be [beta1, beta2] with "
                              "0 <= beta < 1")
        if self.name != "lars" and self.clip:
            raise ConfigError(f"optim.clip: LARC clipping is a LARS option; with optim.name "
                              f"{self.name!r} set it to false")
        return self


class ScheduleConfig(_Section):
    name: Literal["plateau_halving", "warmup_cosine", "constant"] = Field(
        "plateau_halving", description="fixed-then-halve for online runs")
    warmup_steps: Count = 500
    start_lr: NonNegative = Field(0.0, description="LR at step 0 of the warmup, as a fraction "
                                  "of lr")
    patience: Patience = Field(2000, description="plateau: steps without improvement before "
                               "halving")
    min_delta: NonNegative = Field(0.005, description="plateau: relative improvement that counts")
    smoothing: Smoothing = Field(0.99, description="plateau: EMA factor of the loss")
    cooldown: Count = Field(1000, description="plateau: steps after a halving with no decision")
    factor: Factor = Field(0.5, description="plateau: LR multiplier at each decision")
    min_lr: float = Field(0.0, ge=0, le=1, description="floor, as a fraction of lr")
    cosine_steps: Count = Field(100_000, description="cosine: length of the decay after warmup")
    final_lr: NonNegative = Field(0.0, description="cosine: final LR, as a fraction of lr")


class TrainConfig(_Section):
    batch_size: PosInt = Field(16, description="images per worker per step")
    num_workers: PosInt | list[PosInt] = Field(1, description="Ray Train workers (one per GPU on "
                                               "a cluster); [min, max]: an elastic group that "
                                               "trains on with the workers it gets (preemptible "
                                               "GPUs)")
    use_gpu: bool = False
    cpus_per_worker: Positive = 1.0
    amp: Literal["auto", "off", "bf16", "fp16"] = Field("auto", description="auto: bf16 where "
                                                        "supported, fp16 with a grad scaler on "
                                                        "older GPUs")
    max_steps: Count = Field(0, description="stop after this step (0: never)")
    max_minutes: float = Field(0.0, ge=0, description="stop this many minutes after `seer "
                               "pretrain` started, worker restarts included (0: never)")
    log_every_steps: PosInt = 10
    seed: Count = 0
    max_bad_steps: PosInt = Field(3, description="consecutive non-finite losses before rolling "
                                  "back to a checkpoint")
    max_repeated_failures: PosInt = Field(3, description="end the run when the same error stops "
                                          "it at the same step this many times in a row (a "
                                          "deterministic failure); other failures restart the "
                                          "workers")
    torch_threads: Count = Field(0, description="intra-op threads per worker (0: torch default)")
    collective_timeout_s: Positive = Field(1800.0, description="DDP collective timeout")
    resize_check_s: Positive = Field(60.0, description="elastic train.num_workers: how often Ray "
                                     "Train looks for workers to grow the group (a grown group "
                                     "restarts from the newest committed checkpoint)")

    @model_validator(mode="after")
    def _rules(self) -> TrainConfig:
        workers = self.num_workers
        if isinstance(workers, list) and (len(workers) != 2 or workers[0] > workers[1]):
            raise ConfigError(f"train.num_workers: {workers!r} must be a number of workers or "
                              "[min, max] with min <= max")
        if isinstance(workers, list) and workers[0] == workers[1]:
            self.num_workers = workers[0]
        if self.amp == "fp16" and not self.use_gpu:
            raise ConfigError("train.amp: 'fp16' needs train.use_gpu: true; allowed on CPU: "
                              "auto, off, bf16")
        return self

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, list) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[-1] if isinstance(self.num_workers, list) else self.num_workers

    @property
    def elastic(self) -> bool:
        return self.min_workers != self.max_workers


class FeedConfig(_Section):
    uri: str = Field("runs/sample-images", description="s3://bucket/prefix, a manifest file, "
                     "a folder, or shards: a brace pattern (.../{00000..00099}.tar), a .tar, or "
                     "a glob .../*.tar / .../*.parquet")
    kind: Literal["auto", "directory", "s3", "manifest", "shards"] = Field(
        "auto", description="auto: shards for a brace pattern, .tar/.tgz or a *.tar/*.parquet "
        "glob; a manifest for .parquet/.txt/.csv; else s3:// prefix or folder")
    endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, Ceph...); no "
                                     "credentials here")
    region: str | None = None
    pool_size: PosInt = Field(100_000, description="keys kept in the random sampling pool")
    refresh_seconds: Positive = Field(300.0, description="how often the key pool is refreshed")
    idle_stop_seconds: Positive = Field(900.0, description="a process's feed nobody sampled from "
                                        "for this long stops listing (resumes on use)")
    manifest_column: str = "key"
    manifest_base: str | None = Field(None, description="prefix for relative keys in a manifest")
    extensions: list[str] = Field(
        [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"],
        description="object name endings sampled from folders and buckets ([] = any)")
    fetch_timeout_s: Positive = 30.0
    retry_budget_s: Positive = Field(120.0, description="wall time one object read may spend, "
                                     "retries included: seer calls again, with backoff, when "
                                     "botocore gives up on a transient error or a body breaks "
                                     "off, until this is spent (the last call starts by then); "
                                     "also bounds a local file read and a manifest download")
    max_attempts: PosInt = Field(8, description="requests botocore may send per S3 call (its "
                                 "total_max_attempts, the first included; fewer once its retry "
                                 "quota is spent); also the most reads of a local file or "
                                 "manifest download within the budget")
    shuffle_buffer: Count = Field(256, description="shards: images each read task holds to mix "
                                  "shards (memory: this x the image size; 0: no mixing)")
    images_per_shard_visit: PosInt | None = Field(None, description="shards: images read from "
                                                  "one shard before drawing another (null: the "
                                                  "whole shard, fewest requests)")
    image_column: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="shards: the Parquet image column (null: the first of image, jpg)")


class IngestConfig(_Section):
    """The never-ending ingest stream (services/ingest/stream.py; README "Ingest stream")."""

    actors: Count = Field(0, description="ingest actors in the pool (0: the CPUs Ray has left "
                          "after the Train workers and read tasks, over cpus_per_actor); changing "
                          "it restarts the stream")
    fetch_threads: PosInt = Field(8, description="concurrent object fetches per read task")
    cpus_per_actor: Positive = 1.0
    read_tasks: PosInt = Field(2, description="endless read tasks drawing random keys")
    chunk_images: PosInt = Field(64, description="keys each read task draws at a time")
    read_task_cpus: Positive = 0.25
    max_object_bytes: PosInt = Field(32 * 1024 * 1024, description="larger objects are skipped")
    prefetch_batches: Count = 2
    target_max_block_mb: PosInt = Field(4, description="Ray Data block size cap; at most "
                                        "object_store_mb/32 (guard rail)")
    object_store_mb: int = Field(256, ge=32, description="Ray Data object-store budget of the "
                                 "stream (resource_limits)")

    @model_validator(mode="after")
    def _rules(self) -> IngestConfig:
        if self.target_max_block_mb * 32 > self.object_store_mb:
            raise ConfigError(
                f"ingest.target_max_block_mb: {self.target_max_block_mb} MiB blocks against "
                f"ingest.object_store_mb={self.object_store_mb} would let the endless read "
                f"tasks out-run the trainers; allowed: 1..{self.object_store_mb // 32} (at "
                "most 1/32 of the budget), or raise ingest.object_store_mb")
        return self


class CheckpointConfig(_Section):
    storage: str = Field("runs", description="a folder or s3://bucket/prefix")
    endpoint_url: str | None = Field(None, description="S3 endpoint for the checkpoint store")
    run_name: str = Field("seer-local", description="rerun with the same name to resume")
    every_steps: PosInt = 500
    every_minutes: float = Field(30.0, ge=0, description="also checkpoint after this long (0: off)")
    keep: int = Field(3, ge=2, description="newest committed checkpoints kept (>= 2: one may be "
                      "mid-upload)")
    store_grace_minutes: Positive = Field(720.0, description="how long a run waits for an "
                                          "unreachable checkpoint store before it gives up (an "
                                          "outage is waited out, never taken for corruption)")


class MetricsConfig(_Section):
    enabled: bool = True
    export_port: Port = Field(8080, description="Ray's metrics export port (local Ray)")
    status_port: Port = Field(9100, description="the CLI's own /metrics page (0: off)")


class EvalConfig(_Section):
    """`seer eval`: frozen-trunk evaluation of checkpoints on a labelled set (CLI flags win)."""

    data: str = Field("runs/labelled", description="labelled set: a folder (train/<class>/ + "
                      "val/<class>/, or <class>/), s3://bucket/prefix, or a Parquet file "
                      "(image, label[, split])")
    endpoint_url: str | None = Field(None, description="S3 endpoint of the labelled set "
                                     "(default: feed.endpoint_url, then the env)")
    protocols: list[EvalProtocol] = Field(["knn", "linear"], description="what to run: knn, "
                                          "linear, lowshot, finetune")
    stage: Literal["res4", "res5"] = Field("res5", description="trunk stage whose pooled "
                                           "features count")
    knn_k: list[PosInt] = Field([20, 200], description="kNN neighbour counts")
    temperature: Positive = Field(0.07, description="kNN vote temperature: weights exp(sim / T)")
    image_size: int = Field(224, ge=16, description="center-crop side of the evaluation images")
    batch_size: PosInt = Field(64, description="images per feature-extraction batch")
    val_fraction: float = Field(0.2, gt=0, le=0.9, description="per-class validation share when "
                                "the set has no val/ split")
    split_seed: Count = Field(0, description="seed of that train/validation split")
    probe_epochs: PosInt = Field(100, description="linear probe epochs (each sweep point)")
    lowshot_fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        [0.01, 0.1], description="low-shot: share of each class kept")
    lowshot_seeds: list[Count] = Field(
        [0, 1, 2], description="low-shot: one subset per seed (mean ± std)")
    finetune_steps: PosInt = Field(200, description="finetune: SGD steps on a copy of the trunk")
    finetune_lr: Positive = Field(0.01, description="finetune: learning rate")
    baseline: Literal["none", "random"] = Field("random", description="also evaluate a "
                                                "random-initialised trunk of the same architecture")
    seed: Count = Field(0, description="seed of the random baseline trunk and of the probes")
    results: str | None = Field(None, description="results file (JSON lines; the PNG goes beside "
                                "it); default <checkpoint.storage>/<checkpoint.run_name>-eval/"
                                "results.jsonl")
    interval_s: Positive = Field(300.0, description="--watch: seconds between polls of the store")
    metrics_port: Port = Field(9101, description="--watch: seer_eval_* gauges (0: off)")
    metrics_addr: str = Field("127.0.0.1", description="--watch: address the gauges are served "
                              "on (loopback; a pod that is scraped passes 0.0.0.0, as the k8s "
                              "manifests do)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    torch_threads: Count = Field(0, description="intra-op CPU threads (0: torch default; 1-2 on a "
                                 "node shared with ingest)")

    @model_validator(mode="after")
    def _rules(self) -> EvalConfig:
        for name in ("protocols", "knn_k", "lowshot_fractions", "lowshot_seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(f"eval.{name}: {values!r} has duplicates")
        if not self.protocols:
            raise ConfigError("eval.protocols: empty; allowed values: " + ", ".join(EVAL_PROTOCOLS))
        if "knn" in self.protocols and not self.knn_k:
            raise ConfigError("eval.knn_k: empty; give at least one k (e.g. [20, 200]) for knn")
        if "lowshot" in self.protocols and not (self.lowshot_fractions and self.lowshot_seeds):
            raise ConfigError(
                "eval.lowshot_fractions / eval.lowshot_seeds: lowshot needs at least one of each")
        if not self.data.strip():
            raise ConfigError("eval.data: empty; give a folder, s3://bucket/prefix or a Parquet "
                              "file")
        return self


class SeerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = ModelConfig()
    swav: SwAVConfig = SwAVConfig()
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    feed: FeedConfig = FeedConfig()
    ingest: IngestConfig = IngestConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: MetricsConfig = MetricsConfig()
    eval: EvalConfig = EvalConfig()

    @field_validator("*", mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        return {} if value is None else value  # `eval:` with every key commented out

    @model_validator(mode="after")
    def _across_sections(self) -> SeerConfig:
        """Rules between sections, and the registries of trunks and recipes (imported late:
        they import torch)."""
        for section in SeerConfig.model_fields:
            for name, value in getattr(self, section):
                if name.endswith("endpoint_url") and value and has_credentials(value):
                    raise ConfigError(credentials_message(f"{section}.{name}"))
        from seer_core.augment import RECIPES, resolve_recipe
        from seer_core.models import TRUNK_NAMES

        if self.model.trunk not in TRUNK_NAMES:
            raise ConfigError(f"model.trunk: {self.model.trunk!r} is not a known trunk; "
                              "allowed: " + ", ".join(TRUNK_NAMES))
        if self.augment.recipe not in RECIPES:
            raise ConfigError(f"augment.recipe: {self.augment.recipe!r} is not allowed; "
                              "allowed: " + ", ".join(RECIPES))
        try:
            recipe = resolve_recipe(self.augment.recipe, self.augment.overrides())
        except ValueError as exc:
            raise ConfigError(f"augment: {exc}") from exc
        assign, n_crops = self.swav.crops_for_assign, recipe.n_crops
        if not assign or len(set(assign)) != len(assign) or not all(0 <= a < n_crops
                                                                     for a in assign):
            raise ConfigError(f"swav.crops_for_assign: {assign!r} must be distinct crop "
                              f"indices in [0, {n_crops})")
        if self.swav.global_local_alpha is not None and any(a >= recipe.n_global for a in assign):
            raise ConfigError("swav.crops_for_assign: with swav.global_local_alpha every "
                              f"assigned crop must be a global crop (index < {recipe.n_global})")
        # The SwAV queue is split over whatever world size the (elastic) group has, so it must
        # divide evenly for every one of them.
        train, queue = self.train, self.swav.queue_length
        uneven = [w for w in range(train.min_workers, train.max_workers + 1) if queue % w]
        if uneven:
            raise ConfigError(f"swav.queue_length: {queue} must be a multiple of every world "
                              f"size train.num_workers allows ({train.num_workers}); it is not "
                              f"of {uneven}")
        if queue and queue // train.max_workers < train.batch_size:
            raise ConfigError("swav.queue_length: per-worker length must be at least "
                              "train.batch_size")
        if self.model.sync_bn_group_size and train.max_workers > 1 and not train.use_gpu:
            # torch's SyncBatchNorm raises ValueError on CPU tensors in training (torch 2.x:
            # cuda, xpu, hpu only), so every worker would fail at its first step and the group
            # restart for ever. A world of one never converts: that stays allowed.
            raise ConfigError(
                f"model.sync_bn_group_size: {self.model.sync_bn_group_size} (SyncBatchNorm) "
                f"needs GPUs with train.num_workers {train.num_workers} > 1; with "
                "train.use_gpu: false set model.sync_bn_group_size: 0, train.num_workers: 1, "
                "or train.use_gpu: true")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def global_batch(self, world: int | None = None) -> int:
        """Images per step over `world` workers (default: the most the config allows)."""
        return self.train.batch_size * (world or self.train.max_workers)

    def scaled_lr(self, world: int | None = None) -> float:
        """The base LR after linear scaling with the global batch (SwAV/SEER convention). An
        elastic group passes the world size it actually has: the LR follows the batch used."""
        ref = self.optim.lr_reference_batch
        return self.optim.lr * (self.global_batch(world) / ref if ref else 1.0)


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
