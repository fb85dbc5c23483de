"""The `seer pretrain` driver: starts or joins Ray, runs the trainer, shows progress, stops well.

On a laptop it starts a local Ray sized for the config; under `ray job submit` (RAY_ADDRESS set)
it joins the cluster. SIGTERM and Ctrl-C become a stop request that the workers honour after a
final checkpoint; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import urlparse

from seer_core.config import SeerConfig, config_from_dict
from seer_core.training.preflight import preflight
from services import metrics
from services.driver.control import ask, create_control
from services.driver.local_ray import start_local_ray
from services.feed.base import FeedSpec
from services.feed.shards.names import check_shard_pattern
from services.feed.shards.source import SHARD_SUFFIXES, ShardSource
from services.ingest.read import feed_spec
from services.ingest.stream import pool_size, reserved_cpus
from services.storage import RunStorage
from services.trainer.build import build_trainer
from services.trainer.checkpoints import storage_for
from services.trainer.collective import StoreWait, wait_for_store

T = TypeVar("T")


@dataclass
class PretrainOutcome:
    step: int
    images_seen: int
    checkpoint: str | None
    stopped_by: str
    metrics: dict[str, Any]


def required_cpus(cfg: SeerConfig) -> float:
    """CPUs the run asks Ray for: Train workers, ingest actors, read tasks, the controller."""
    return reserved_cpus(cfg) + max(1, cfg.ingest.actors) * cfg.ingest.cpus_per_actor


@dataclass(frozen=True)
class RayPlaces:
    """Where the banner sends people: Ray's metrics, and for a local instance its logs and UI."""

    metrics: str
    logs: str | None = None
    dashboard: str | None = None


def init_ray(cfg: SeerConfig, address: str | None = None) -> RayPlaces:
    """Joins a cluster when an address is given (or RAY_ADDRESS is set), else starts local Ray.

    A joined cluster keeps Ray's defaults (its logs are the job's logs). A local instance lives
    on loopback (`local_ray`) and keeps Ray's own output in its log folder, so that the
    terminal shows seer's progress lines and the warnings workers relay (driver.control).
    """
    import ray

    if ray.is_initialized():
        return RayPlaces("Ray's metrics export port on each node")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return RayPlaces("Ray's metrics export port on each node (see your cluster's Prometheus)")
    # A laptop: let Ray oversubscribe a small machine rather than wait for CPUs it lacks.
    cpus = max(os.cpu_count() or 1, int(required_cpus(cfg) + 0.999))
    kwargs: dict[str, Any] = {"num_cpus": cpus, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    metrics_url = "(metrics export disabled)"
    if cfg.metrics.enabled and cfg.metrics.export_port:
        kwargs["_metrics_export_port"] = cfg.metrics.export_port
        metrics_url = f"http://127.0.0.1:{cfg.metrics.export_port}/metrics"
    info = start_local_ray(dashboard=True, **kwargs)
    webui = str(info.get("webui_url") or "")
    logs = os.path.join(str(info.get("session_dir", "/tmp/ray/session_latest")), "logs")
    return RayPlaces(metrics_url, logs,
                     f"http://{webui}" if webui and "://" not in webui else webui or None)


class StatusPage:
    """The driver's own /metrics (prometheus_client): what the run is doing, from rank 0."""

    gauges = {
        key: metrics.gauge(name, f"{key} of the run, as rank 0 last reported")
        for key, name in {
            "step": "seer_cli_step",
            "images_seen": "seer_cli_images_seen",
            "loss": "seer_cli_loss",
            "lr": "seer_cli_lr",
            "images_per_second": "seer_cli_images_per_second",
            "data_wait_share": "seer_cli_data_wait_ratio",
            "embedding_rank": "seer_cli_embedding_rank",
            "last_checkpoint_step": "seer_cli_checkpoint_step",
            "world_size": "seer_cli_world_size",
        }.items()
    }

    def __init__(self, port: int) -> None:
        self.server = None
        for gauge in self.gauges.values():
            gauge.ready()  # on the page (0) before rank 0's first report
        if port:
            self.server, _ = metrics.serve(port)

    def update(self, progress: dict[str, Any]) -> None:
        for key, gauge in self.gauges.items():
            value = progress.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                gauge.set(float(value))

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def format_progress(p: dict[str, Any]) -> str:
    return (
        f"step {p['step']:>8} | {p.get('images_per_second', 0):8.1f} img/s | "
        f"loss {p['loss']:.4f} | lr {p['lr']:.5g} | "
        f"rank {p.get('embedding_rank', math.nan):4.1f} | "
        f"data wait {100 * p.get('data_wait_share', 0):4.1f}% | seen {p['images_seen']} | "
        f"last ckpt {p.get('last_checkpoint_step', -1)} | workers {p.get('world_size', '?')}"
    )


class ProgressPrinter(threading.Thread):
    """Polls the control actor and prints a line whenever rank 0 reported a new step."""

    def __init__(self, control: Any, out: TextIO, page: StatusPage) -> None:
        super().__init__(daemon=True, name="seer-progress")
        self.control, self.out, self.page = control, out, page
        self.done = threading.Event()
        self.last_step = -1
        self.next_note = 0

    def run(self) -> None:
        while not self.done.wait(2.0):
            self.poll()
        self.poll()  # the run's last report, which may have come after the last tick

    def poll(self) -> None:
        """Rank 0's newest progress, then the workers' relayed warnings and errors, once each."""
        p = ask(self.control, "progress", timeout=10) or {}
        if "step" in p and p["step"] != self.last_step:
            self.last_step = p["step"]
            self.page.update(p)
            print(format_progress(p), file=self.out, flush=True)
        for number, text in ask(self.control, "notes", self.next_note, timeout=10) or []:
            print(text, file=self.out, flush=True)
            self.next_note = number + 1


def banner(cfg: SeerConfig, storage: RunStorage, places: RayPlaces, status_port: int,
           actors: int | None = None) -> str:
    t = cfg.train
    workers = f"{t.min_workers}-{t.max_workers} (elastic)" if t.elastic else str(t.max_workers)
    lines = [
        f"seer pretrain — run {cfg.checkpoint.run_name!r}: {cfg.model.trunk}, recipe "
        f"{cfg.augment.recipe}, {workers} worker(s) x batch {t.batch_size}"
        f" ({'GPU' if t.use_gpu else 'CPU'})",
        f"  feed:        {cfg.feed.uri}",
    ]
    if actors is not None:
        ing = cfg.ingest
        how = "" if ing.actors else " (auto: from the CPUs Ray has)"
        lines.append(
            f"  ingest:      {actors} actor(s) x {ing.cpus_per_actor:g} CPU{how}, "
            f"{ing.read_tasks} endless read task(s); blocks {ing.target_max_block_mb} MiB, "
            f"object-store budget {ing.object_store_mb} MiB"
        )
    lines += [
        f"  checkpoints: {storage.display} (every {cfg.checkpoint.every_steps} steps / "
        f"{cfg.checkpoint.every_minutes:g} min, newest {cfg.checkpoint.keep} kept)",
        f"  metrics:     {places.metrics} (workers, ingest)",
    ]
    if status_port:
        lines.append(f"  status page: http://127.0.0.1:{status_port}/metrics (this driver)")
    if places.dashboard:
        lines.append(f"  ray:         {places.dashboard} (Ray's dashboard)")
    if places.logs:
        lines.append(f"  ray logs:    {places.logs} (Ray's own output)")
    stop = [f"step {t.max_steps}" if t.max_steps else "",
            f"{t.max_minutes:g} min" if t.max_minutes else ""]
    lines.append("  stops at:    " + (" or ".join(filter(None, stop))
                                      or "never: Ctrl-C or SIGTERM checkpoints and stops"))
    return "\n".join(lines)


def check_feed(cfg: SeerConfig) -> None:
    """Fails early, with the fix, when a local feed names nothing: a missing folder, or a shard
    pattern, glob or folder (``feed.kind`` ``shards``) under which no shard exists. Shards are
    listed by the feed's own lister, so what passes here is what the read tasks will find."""
    uri = cfg.feed.uri
    if "://" in uri and not uri.startswith("file://"):
        return
    try:
        spec = feed_spec(cfg)
    except ValueError as exc:
        raise SystemExit(f"feed.{exc}") from None
    if spec.resolved_kind() == "shards":
        _check_local_shards(uri, spec)
        return
    path = Path(uri.removeprefix("file://"))
    if not path.exists():
        raise SystemExit(
            f"feed.uri: {uri} does not exist. Create sample images with `seer seed --out {uri}`"
            " (or `make run`, which does it), or point feed.uri at a folder, a manifest, shards "
            "(`seer seed --shards`) or s3://bucket/prefix."
        )


def _check_local_shards(uri: str, spec: FeedSpec) -> None:
    source = ShardSource(spec)  # lists only when asked: nothing starts here
    try:
        # A single shard or a .txt list is listed as named: only a file that is there counts.
        found = [name for name in source.list_shards() if os.path.isfile(name)]
    except OSError as exc:  # a shard list (.txt) that cannot be read
        raise SystemExit(f"feed.uri: {uri}: {exc}") from None
    finally:
        source.close()
    if found:
        return
    path = uri.removeprefix("file://")
    named = check_shard_pattern(path)
    what = f"none of the {named:,} shards it names exists" if named > 1 else "no shard exists"
    # The folder to seed: the pattern's up to its first brace or wildcard, or the folder named.
    literal = re.split(r"[{*?\[]", path, maxsplit=1)[0]
    named_folder = literal == path and not path.lower().endswith((*SHARD_SUFFIXES, ".txt"))
    folder = path.rstrip("/") if named_folder else os.path.dirname(literal)
    fmt = " --format parquet" if path.lower().endswith(".parquet") else ""
    raise SystemExit(
        f"feed.uri: {uri}: {what}. Write sample shards with "
        f"`seer seed --shards{fmt} --out {shlex.quote(folder or '.')}` (it prints the feed.uri "
        "to use), or point feed.uri at shards that exist."
    )


def anchor_local_paths(cfg: SeerConfig, base: str | None = None) -> SeerConfig:
    """A copy of `cfg` whose relative local paths are made absolute against `base` (the cwd):
    Ray Train starts its workers in a folder of the Ray session, where `runs/checkpoints` would
    name another, empty place. URIs with a scheme and absolute paths are left alone. Of a shard
    pattern only the folder before its first brace is normalised (a brace group is not a path
    segment: it may hold a `/` or `..`)."""
    root = base or os.getcwd()

    def anchor(value: str | None) -> str | None:
        if not value or urlparse(value).scheme:
            return value
        path = os.path.expanduser(value)
        if os.path.isabs(path):
            return path
        literal, brace, rest = path.partition("{")
        if not brace:
            return os.path.normpath(os.path.join(root, path))
        folder, _, stem = literal.rpartition("/")
        return os.path.join(os.path.normpath(os.path.join(root, folder)), stem + brace + rest)

    out = config_from_dict(cfg.to_dict())
    out.feed.uri = anchor(out.feed.uri) or out.feed.uri
    out.feed.manifest_base = anchor(out.feed.manifest_base)
    out.checkpoint.storage = anchor(out.checkpoint.storage) or out.checkpoint.storage
    return out


def fit_beside_signals(fit: Callable[[], T]) -> T:
    """Runs `fit` in a thread while the main thread waits, keeping seer's signal handlers:
    Ray Train's `fit()` on the main thread replaces the SIGINT handler with one that aborts
    without a final checkpoint. The main thread, joining in short waits, runs our handlers."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fit()
        except BaseException as exc:  # re-raised on the main thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="seer-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in box:
        raise box["error"]
    return box["result"]


class RunFailed(RuntimeError):
    """The run failed the same way again and again (driver.control): restarting is futile."""


def run_pretraining(
    cfg: SeerConfig,
    *,
    address: str | None = None,
    synthetic: bool = False,
    out: TextIO = sys.stdout,
    install_signals: bool = True,
) -> PretrainOutcome:
    """Runs until a configured limit or a stop request; returns where it ended."""
    import ray

    preflight(cfg)  # a config the workers cannot build fails here, once, not in every restart
    cfg = anchor_local_paths(cfg)
    if not synthetic:
        check_feed(cfg)
    ray_places = init_ray(cfg, address)
    storage = storage_for(cfg)
    grace = cfg.checkpoint.store_grace_minutes * 60
    existing = wait_for_store(storage.list_checkpoints, StoreWait("list the checkpoints", grace))
    page = StatusPage(cfg.metrics.status_port if cfg.metrics.enabled else 0)
    actors = None if synthetic else pool_size(cfg)
    print(banner(cfg, storage, ray_places, cfg.metrics.status_port, actors), file=out,
          flush=True)
    if existing:
        print(f"  resuming:    from step {existing[-1][0]} ({existing[-1][1]})", file=out,
              flush=True)

    control = create_control(cfg.checkpoint.run_name, cfg.train.max_repeated_failures)
    stopped_by = ["limit"]
    previous: dict[int, Any] = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if stopped_by[0] != "limit":  # second signal: stop now
                raise KeyboardInterrupt
            stopped_by[0] = name
            print(f"\n{name}: writing a final checkpoint, then stopping (again to abort)",
                  file=out, flush=True)
            control.request_stop.remote(name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)

    printer = ProgressPrinter(control, out, page)
    printer.start()
    try:
        trainer = build_trainer(cfg, synthetic=synthetic, actors=actors)
        # Ray Train never sees seer's checkpoints: the newest committed one tells where the
        # run ended (its meta.json holds what rank 0 reported with it).
        fit_beside_signals(trainer.fit) if previous else trainer.fit()
    finally:
        printer.done.set()
        printer.join(timeout=15)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        page.close()
        fatal = ask(control, "fatal", timeout=30)  # None: the actor is gone, nothing was fatal
        with contextlib.suppress(Exception):
            ray.kill(control)
    if fatal is not None:
        raise RunFailed(fatal)
    final = wait_for_store(storage.list_checkpoints, StoreWait("list the checkpoints", grace))
    summary = storage.read_meta(final[-1][1]) if final else {}
    outcome = PretrainOutcome(int(summary.get("step", 0)), int(summary.get("images_seen", 0)),
                              final[-1][1] if final else None, stopped_by[0], summary)
    print(
        f"stopped ({outcome.stopped_by}) at step {outcome.step}, {outcome.images_seen} images "
        f"seen; newest checkpoint: {outcome.checkpoint}",
        file=out, flush=True,
    )
    return outcome
