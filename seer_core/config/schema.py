"""The typed configuration schema of seer: every knob, its default and its bounds.

Defaults run on a laptop (the embedded default). Each field carries its help text and numeric
bounds (`knob`), so validation and error messages come from the schema itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml


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
    blur_probability: float = knob(
        0.5, ge=0, le=1, help="share of crops blurred (SwAV: 0.5; destructive at <= 64 px)"
    )
    photometric_ramp_steps: int = knob(
        0, ge=0, help="colour jitter and grayscale grow from none to full over these steps "
        "(0: full from the start; needs photometric_on_device)"
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
    name: Literal["lars", "adamw"] = knob(
        "lars", help="lars (SwAV/SEER, large batches) or adamw (small batches, short budgets)"
    )
    lr: float = knob(0.3, gt=0, help="base LR for a global batch of `lr_reference_batch`")
    lr_reference_batch: int = knob(
        256, ge=0, help="LR scales linearly with global batch / this (0: no scaling)"
    )
    weight_decay: float = knob(1e-6, ge=0)
    momentum: float = knob(0.9, ge=0, le=1, help="LARS momentum (lars only)")
    betas: list[float] = knob(
        factory=lambda: [0.9, 0.999], ge=0, help="AdamW's (beta1, beta2), each < 1 (adamw only)"
    )
    eta: float = knob(0.001, gt=0, help="LARS trust coefficient (lars only)")
    exclude_bias_and_norm: bool = knob(True, help="no LARS adaptation/decay on biases and norms")
    clip: bool = knob(False, help="LARC clipping of the local LR at the global LR (lars only)")


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
    min_lr: float = knob(0.0, ge=0, le=1, help="floor, as a fraction of lr")
    cosine_steps: int = knob(100_000, ge=1, help="cosine: length of the decay after warmup")
    final_lr: float = knob(0.0, ge=0, help="cosine: final LR, as a fraction of lr")


@dataclass
class TrainConfig:
    batch_size: int = knob(16, ge=1, help="images per worker per step")
    num_workers: int | list[int] = knob(
        1, ge=1, help="Ray Train workers (one per GPU on a cluster); [min, max]: an elastic "
        "group that trains on with the workers it gets (preemptible GPUs)"
    )
    use_gpu: bool = knob(False)
    cpus_per_worker: float = knob(1.0, gt=0)
    amp: Literal["auto", "off", "bf16", "fp16"] = knob(
        "auto", help="auto: bf16 where supported, fp16 with a grad scaler on older GPUs"
    )
    max_steps: int = knob(0, ge=0, help="stop after this step (0: never)")
    max_minutes: float = knob(
        0.0, ge=0,
        help="stop this many minutes after `seer pretrain` started, worker restarts included "
        "(0: never)",
    )
    log_every_steps: int = knob(10, ge=1)
    seed: int = knob(0, ge=0)
    max_bad_steps: int = knob(
        3, ge=1, help="consecutive non-finite losses before rolling back to a checkpoint"
    )
    max_repeated_failures: int = knob(
        3, ge=1,
        help="end the run when the same error stops it at the same step this many times in a "
        "row (a deterministic failure); other failures restart the workers",
    )
    torch_threads: int = knob(0, ge=0, help="intra-op threads per worker (0: torch default)")
    collective_timeout_s: float = knob(1800.0, gt=0, help="DDP collective timeout")
    resize_check_s: float = knob(
        60.0, gt=0, help="elastic train.num_workers: how often Ray Train looks for workers to "
        "grow the group (a grown group restarts from the newest committed checkpoint)"
    )

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, list) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[-1] if isinstance(self.num_workers, list) else self.num_workers

    @property
    def elastic(self) -> bool:
        return self.min_workers != self.max_workers


@dataclass
class FeedConfig:
    uri: str = knob("runs/sample-images", help="s3://bucket/prefix, a manifest file, or a folder")
    kind: Literal["auto", "directory", "s3", "manifest"] = knob("auto")
    endpoint_url: str | None = knob(None, help="S3 endpoint (MinIO, Ceph...); no credentials here")
    region: str | None = knob(None)
    pool_size: int = knob(100_000, ge=1, help="keys kept in the random sampling pool")
    refresh_seconds: float = knob(300.0, gt=0, help="how often the key pool is refreshed")
    idle_stop_seconds: float = knob(
        900.0, gt=0,
        help="a process's feed nobody sampled from for this long stops listing (resumes on use)",
    )
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
    """The never-ending ingest stream (services/stream.py; README "Ingest stream")."""

    actors: int = knob(
        0, ge=0, help="ingest actors in the pool (0: the CPUs Ray has left after the Train "
        "workers and read tasks, over cpus_per_actor); changing it restarts the stream",
    )
    fetch_threads: int = knob(8, ge=1, help="concurrent object fetches per read task")
    cpus_per_actor: float = knob(1.0, gt=0)
    read_tasks: int = knob(2, ge=1, help="endless read tasks drawing random keys")
    chunk_images: int = knob(64, ge=1, help="keys each read task draws at a time")
    read_task_cpus: float = knob(0.25, gt=0)
    max_object_bytes: int = knob(32 * 1024 * 1024, ge=1, help="larger objects are skipped")
    prefetch_batches: int = knob(2, ge=0)
    target_max_block_mb: int = knob(
        4, ge=1, help="Ray Data block size cap; at most object_store_mb/32 (guard rail)"
    )
    object_store_mb: int = knob(
        256, ge=32, help="Ray Data object-store budget of the stream (resource_limits)"
    )


@dataclass
class CheckpointConfig:
    storage: str = knob("runs", help="a folder or s3://bucket/prefix")
    endpoint_url: str | None = knob(None, help="S3 endpoint for the checkpoint store")
    run_name: str = knob("seer-local", help="rerun with the same name to resume")
    every_steps: int = knob(500, ge=1)
    every_minutes: float = knob(30.0, ge=0, help="also checkpoint after this long (0: off)")
    keep: int = knob(
        3, ge=2, help="newest committed checkpoints kept (>= 2: one may be mid-upload)"
    )
    store_grace_minutes: float = knob(
        720.0, gt=0, help="how long a run waits for an unreachable checkpoint store before it "
        "gives up (an outage is waited out, never taken for corruption)"
    )


@dataclass
class MetricsConfig:
    enabled: bool = knob(True)
    export_port: int = knob(8080, ge=0, le=65535, help="Ray's metrics export port (local Ray)")
    status_port: int = knob(9100, ge=0, le=65535, help="the CLI's own /metrics page (0: off)")


EVAL_PROTOCOLS: tuple[str, ...] = ("knn", "linear", "lowshot", "finetune")


@dataclass
class EvalConfig:
    """`seer eval`: frozen-trunk evaluation of checkpoints on a labelled set (CLI flags win)."""

    data: str = knob(
        "runs/labelled",
        help="labelled set: a folder (train/<class>/ + val/<class>/, or <class>/), "
        "s3://bucket/prefix, or a Parquet file (image, label[, split])",
    )
    endpoint_url: str | None = knob(
        None, help="S3 endpoint of the labelled set (default: feed.endpoint_url, then the env)"
    )
    protocols: list[Literal["knn", "linear", "lowshot", "finetune"]] = knob(
        factory=lambda: ["knn", "linear"], help="what to run: knn, linear, lowshot, finetune"
    )
    stage: Literal["res4", "res5"] = knob("res5", help="trunk stage whose pooled features count")
    knn_k: list[int] = knob(factory=lambda: [20, 200], ge=1, help="kNN neighbour counts")
    temperature: float = knob(0.07, gt=0, help="kNN vote temperature: weights exp(sim / T)")
    image_size: int = knob(224, ge=16, help="center-crop side of the evaluation images")
    batch_size: int = knob(64, ge=1, help="images per feature-extraction batch")
    val_fraction: float = knob(
        0.2, gt=0, le=0.9, help="per-class validation share when the set has no val/ split"
    )
    split_seed: int = knob(0, ge=0, help="seed of that train/validation split")
    probe_epochs: int = knob(100, ge=1, help="linear probe epochs (each sweep point)")
    lowshot_fractions: list[float] = knob(
        factory=lambda: [0.01, 0.1], gt=0, le=1, help="low-shot: share of each class kept"
    )
    lowshot_seeds: list[int] = knob(
        factory=lambda: [0, 1, 2], ge=0, help="low-shot: one subset per seed (mean ± std)"
    )
    finetune_steps: int = knob(200, ge=1, help="finetune: SGD steps on a copy of the trunk")
    finetune_lr: float = knob(0.01, gt=0, help="finetune: learning rate")
    baseline: Literal["none", "random"] = knob(
        "random", help="also evaluate a random-initialised trunk of the same architecture"
    )
    seed: int = knob(0, ge=0, help="seed of the random baseline trunk and of the probes")
    results: str | None = knob(
        None,
        help="results file (JSON lines; the PNG goes beside it); default "
        "<checkpoint.storage>/<checkpoint.run_name>-eval/results.jsonl",
    )
    interval_s: float = knob(300.0, gt=0, help="--watch: seconds between polls of the store")
    metrics_port: int = knob(9101, ge=0, le=65535, help="--watch: seer_eval_* gauges (0: off)")
    metrics_addr: str = knob(
        "127.0.0.1", help="--watch: address the gauges are served on (loopback; a pod that is "
        "scraped passes 0.0.0.0, as the k8s manifests do)",
    )
    device: Literal["auto", "cpu", "cuda"] = knob("auto", help="auto: cuda when available")
    torch_threads: int = knob(
        0, ge=0, help="intra-op CPU threads (0: torch default; 1-2 on a node shared with ingest)"
    )


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
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
