"""The pretraining service for real: Ray Train with 2 gloo workers, the ingest stream from a real
S3 server, checkpoints in that S3 server, resume, a killed worker, metrics scraped over HTTP,
and SIGTERM through the real `seer pretrain` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from seer_core.checkpoint import load_state
from seer_core.config import SeerConfig, load_config
from services.driver.pretrain import PretrainOutcome, run_pretraining
from services.images.sample import generate_sample_images
from services.storage import resolve_storage
from tests.s3server import put_objects

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def image_bucket(s3_client: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bucket of 48 small, varied sample images (the feed of every test here)."""
    bucket = f"images-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=bucket)
    folder = tmp_path_factory.mktemp("images")
    generate_sample_images(folder, 48, seed=1, min_side=64, max_side=160, progress=False)
    put_objects(s3_client, bucket,
                {f"img/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())})
    return bucket


def service_config(endpoint: str, image_bucket: str, ckpt_bucket: str, run: str,
                   *extra: str) -> SeerConfig:
    return load_config("local", [
        "model.trunk=tiny", "model.head_hidden=[32]", "model.head_out=16",
        "model.prototypes=32", "augment.global_size=32", "augment.local_size=16",
        "augment.min_side=16", "train.batch_size=4", "train.num_workers=2",
        "train.torch_threads=1", "swav.queue_length=16", "swav.freeze_prototypes_steps=2",
        "schedule.name=warmup_cosine", "schedule.warmup_steps=4", "schedule.cosine_steps=50",
        f"feed.uri=s3://{image_bucket}/img/", f"feed.endpoint_url={endpoint}",
        "feed.refresh_seconds=5", "ingest.actors=1",
        "ingest.cpus_per_actor=0.5", "ingest.read_tasks=1", "ingest.chunk_images=24",
        "ingest.read_task_cpus=0.25", "ingest.object_store_mb=32", "ingest.target_max_block_mb=1",
        "train.cpus_per_worker=0.5",
        f"checkpoint.storage=s3://{ckpt_bucket}/runs", f"checkpoint.endpoint_url={endpoint}",
        f"checkpoint.run_name={run}", "checkpoint.every_steps=3", "checkpoint.keep=2",
        "checkpoint.every_minutes=0", "metrics.status_port=0", "train.log_every_steps=1",
        *extra,
    ])


@pytest.fixture
def ckpt_bucket(s3_client: Any) -> str:
    bucket = f"ckpt-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=bucket)
    return bucket


def test_checkpoints_retention_and_resume(ray_cluster, s3_server, image_bucket,
                                          ckpt_bucket) -> None:
    """Rolling checkpoints and resume; the first run also shows the never-ending stream: the
    same two ingest actor processes serve the 2-worker run (streaming_split) from its first to
    its last batch, across more than 3x the old pass length (one 24-image window per pass),
    and nothing of the stream survives the run. The actors are watched as Ray names their
    processes (``ray::...IngestActor...``) every 0.5 s: an actor lives far longer than that
    (it imports torch), so a replaced one would show as a third process."""
    endpoint = s3_server.endpoint_url
    steps = 10  # x 2 workers x batch 4 = 80 images
    cfg = service_config(endpoint, image_bucket, ckpt_bucket, "resume", "ingest.actors=2",
                         "ingest.chunk_images=8", f"train.max_steps={steps}")
    assert_stream_stopped()  # nothing left over from earlier tests
    during: list[set[int]] = []
    stop = threading.Event()

    def watch() -> None:  # the stream's processes while the run goes on
        while not stop.wait(0.5):
            during.append({p.pid for p in _stream_processes() if "IngestActor" in _cmd(p)})

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        first = run_pretraining(cfg, install_signals=False)
    finally:
        stop.set()
        watcher.join(timeout=10)
    # Every image the trainers took was cropped by the stream's actors: more than 3 old passes.
    assert first.step == steps and first.images_seen == steps * 4 * 2 > 3 * 24
    seen = set().union(*during)
    # Exactly the pool's two processes ever existed (no actor restarted or replaced).
    assert len(seen) == 2, during
    assert_stream_stopped()
    assert all(not psutil.pid_exists(pid) or psutil.Process(pid).status() ==
               psutil.STATUS_ZOMBIE for pid in seen)

    storage = resolve_storage(cfg.checkpoint.storage, "resume", endpoint)
    kept = [s for s, _ in storage.list_checkpoints()]
    assert kept == [9, 10], kept  # every 3 steps + the final one, newest 2 kept
    meta10 = storage.read_meta(storage.list_checkpoints()[-1][1])
    assert meta10["step"] == 10

    # The resume itself does not depend on where batches come from: in-memory ones spare the
    # second run the stream's start-up (the first run covered the stream).
    second = run_pretraining(service_config(endpoint, image_bucket, ckpt_bucket, "resume",
                                            "train.max_steps=13"), install_signals=False,
                             synthetic=True)
    assert second.metrics["resumed_step"] == 10
    assert second.metrics["resumed_lr"] == pytest.approx(meta10["lr"])
    assert second.metrics["resumed_queue_filled"] == 8  # 16 over 2 workers: full when saved
    assert second.step == 13 and second.images_seen == 13 * 4 * 2
    assert [s for s, _ in storage.list_checkpoints()] == [12, 13]

    newest = storage.list_checkpoints()[-1][1]
    with storage.filesystem.open_input_stream(f"{newest}/state.pt") as handle:
        local = Path(os.environ.get("TMPDIR", "/tmp")) / f"state-{uuid.uuid4().hex}.pt"
        local.write_bytes(handle.read())
    try:
        saved = load_state(local)
    finally:
        local.unlink()
    assert saved["step"] == 13 and saved["schedule"]["steps_done"] == 13
    assert saved["config"]["checkpoint"]["run_name"] == "resume"


def test_relative_local_checkpoint_folder_resumes(ray_cluster, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`checkpoint.storage` relative to where the command runs (the `local` preset's
    `runs/checkpoints`): the workers, which Ray Train starts in another folder, must resume
    from it too."""
    monkeypatch.chdir(tmp_path)
    overrides = ["model.trunk=tiny", "model.head_hidden=[32]", "model.head_out=16",
                 "model.prototypes=32", "augment.global_size=32", "augment.local_size=16",
                 "train.batch_size=4", "train.num_workers=1", "train.torch_threads=1",
                 "train.cpus_per_worker=0.5", "swav.queue_length=0",
                 "checkpoint.storage=ckpts", "checkpoint.run_name=relative",
                 "checkpoint.every_steps=1000", "checkpoint.every_minutes=0",
                 "metrics.status_port=0"]
    first = run_pretraining(load_config("local", [*overrides, "train.max_steps=2"]),
                            synthetic=True, install_signals=False)
    assert first.step == 2
    assert (tmp_path / "ckpts" / "relative" / "step_000000000002").is_dir()
    second = run_pretraining(load_config("local", [*overrides, "train.max_steps=3"]),
                             synthetic=True, install_signals=False)
    assert second.metrics.get("resumed_step") == 2 and second.step == 3


def _stream_processes() -> list[psutil.Process]:
    """Live processes running an ingest actor or an endless read task (Ray's process titles)."""
    return [p for p in _our_ray_processes()
            if "IngestActor" in _cmd(p) or "EndlessRandom" in _cmd(p)]


def _cmd(proc: psutil.Process) -> str:
    return " ".join(proc.info["cmdline"] or [])


def _our_ray_processes() -> list[psutil.Process]:
    """Live processes of this session's Ray node only: the machine may run other Ray
    instances (another checkout's tests), whose workers must not be counted or killed."""
    from tests.integration.conftest import ray_pids

    ours = ray_pids()
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.pid in ours and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def assert_stream_stopped(timeout: float = 60.0) -> None:
    """No ingest actor or read task outlives the run (Ray tears them down asynchronously)."""
    deadline = time.monotonic() + timeout
    left = _stream_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _stream_processes()
    assert not left, [(p.pid, p.info.get("cmdline")) for p in left]


def _train_workers() -> list[psutil.Process]:
    return [p for p in _our_ray_processes() if "RayTrainWorker" in _cmd(p)]


def _the_two_workers(timeout: float = 60.0) -> list[psutil.Process]:
    """This run's two live worker processes; waits out workers of an earlier run still exiting
    (Ray tears actors down asynchronously), so the kill hits a worker of this run."""
    deadline = time.monotonic() + timeout
    workers = _train_workers()
    while len(workers) != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        workers = _train_workers()
    assert len(workers) == 2, [(p.pid, p.info.get("cmdline")) for p in workers]
    return workers


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_killed_worker_resumes_and_metrics_are_scraped(ray_cluster, s3_server, image_bucket,
                                                       ckpt_bucket) -> None:
    import ray

    from services.driver.control import find_control

    endpoint = s3_server.endpoint_url
    # No step limit: the run lasts until this test asks it to stop, whatever the timing.
    cfg = service_config(endpoint, image_bucket, ckpt_bucket, "faults")
    storage = resolve_storage(cfg.checkpoint.storage, "faults", endpoint)
    outcome: list[PretrainOutcome] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(run_pretraining(cfg, install_signals=False))
        except BaseException as exc:  # surfaced in the assertion below
            errors.append(exc)

    def newest_step() -> int:
        items = storage.list_checkpoints()
        return items[-1][0] if items else -1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 240
        while newest_step() < 3 and time.monotonic() < deadline:
            assert not errors, errors
            time.sleep(1)
        assert newest_step() >= 3, "no checkpoint within 240 s"

        # The workers' metrics reach Ray's Prometheus endpoint (Ray adds the ray_ prefix). Each
        # metric is exported on its own schedule: wait until every one asserted below is there.
        # Each worker exports its own series, and a series may lag its worker by an export
        # period: wait until the freshest one has caught up with the checkpoint.
        expected = ("ray_seer_train_steps_total", "ray_seer_train_step_seconds_bucket",
                    "ray_seer_train_loss", "ray_seer_ingest_images_total")
        samples: dict[str, list[Any]] = {}
        while time.monotonic() < deadline:
            samples = {}
            for family in text_string_to_metric_families(_scrape(ray_cluster.metrics_url)):
                for sample in family.samples:
                    samples.setdefault(sample.name, []).append(sample)
            steps = samples.get("ray_seer_train_steps_total", [])
            if all(name in samples for name in expected) and max(s.value for s in steps) >= 3:
                break
            time.sleep(1)
        assert all(name in samples for name in expected), sorted(samples)
        steps = samples["ray_seer_train_steps_total"]
        assert max(s.value for s in steps) >= 3
        assert {s.labels["worker"] for s in steps} <= {"0", "1"}
        assert all(s.labels["NodeAddress"] == "127.0.0.1" for s in steps)
        assert sum(s.value for s in samples["ray_seer_ingest_images_total"]) > 0

        workers = _the_two_workers()
        killed_after = newest_step()
        workers[1].kill()

        # Training goes on past the kill: a newer checkpoint appears from the restarted group.
        deadline = time.monotonic() + 240
        while newest_step() <= killed_after + 3 and time.monotonic() < deadline:
            assert not errors, errors
            time.sleep(1)
        assert newest_step() > killed_after + 3, "no progress after the worker was killed"
    finally:
        control = find_control("faults")
        if control is not None:
            ray.get(control.request_stop.remote("test"))
        thread.join(timeout=300)
    assert not thread.is_alive(), "the run did not stop when asked"
    assert not errors, errors
    assert outcome[0].metrics.get("resumed_step", 0) >= killed_after  # restored, not restarted
    assert outcome[0].step > killed_after + 3
    assert_stream_stopped()  # neither the first stream nor the one after the restart survives


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_and_exits_cleanly(ray_cluster, s3_server, image_bucket, ckpt_bucket,
                                              tmp_path: Path, signum: signal.Signals) -> None:
    """`ray job stop` sends SIGTERM, Ctrl-C SIGINT (which Ray Train's fit() would otherwise
    take over and abort without a checkpoint): both end in a final checkpoint and exit 0.
    SIGTERM stops a 2-worker run fed by the stream (and the stream with it); the SIGINT run is
    1 worker on in-memory batches, since what it checks is the driver's signal handling."""
    endpoint = s3_server.endpoint_url
    run = f"stop-{signum.name.lower()}"
    extra = [] if signum == signal.SIGTERM else ["train.num_workers=1"]
    cfg = service_config(endpoint, image_bucket, ckpt_bucket, run, "checkpoint.every_steps=1000",
                         *extra)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(cfg.to_yaml())
    args = [sys.executable, "-m", "services.cli", "pretrain", "--address", ray_cluster.address,
            "--config", str(config_file)]
    if signum == signal.SIGINT:
        args.append("--synthetic")
    log = tmp_path / "pretrain.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and "step " not in log.read_text():
                assert proc.poll() is None, log.read_text()
                time.sleep(1)
            assert "step " in log.read_text(), log.read_text()
            proc.send_signal(signum)
            assert proc.wait(timeout=180) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert f"stopped ({signum.name})" in text, text
    storage = resolve_storage(cfg.checkpoint.storage, run, endpoint)
    checkpoints = storage.list_checkpoints()
    assert checkpoints and checkpoints[-1][0] > 0  # the final checkpoint, not a periodic one
    assert_stream_stopped()
