"""A real Prometheus scrapes a real run: deploy/prometheus.yml, the dashboards and the alerts.

Everything runs on 127.0.0.1 and is started and stopped here: Prometheus (Debian's package) with
deploy/prometheus.yml pointed at this test's ports, `seer pretrain` (its own local Ray, a tiny
model, a folder feed with a few corrupt files so that failures are counted), and `seer eval
--watch` on a tiny labelled set. While the run trains, the test asserts through Prometheus's HTTP
API that the seer series were scraped from all three targets, that every PromQL expression of
every dashboard panel parses, that every target of every core panel returns data, and that the
alert rules load and evaluate without error. Then the run gets SIGTERM (final checkpoint, exit).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.images.sample import generate_sample_images
from tests.deploy.panels import REPO, core_titles, fill_variables, panel_queries
from tests.services.evaluator_helpers import make_labelled
from tests.tools import prometheus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = ["model.trunk=tiny", "model.head_hidden=[32]", "model.head_out=16",
        "model.prototypes=32", "augment.global_size=32", "augment.local_size=16",
        "augment.min_side=16", "train.batch_size=4", "train.torch_threads=1"]
RUN_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
DEADLINE_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@dataclass
class Prom:
    url: str

    def query(self, expr: str) -> dict[str, Any]:
        """/api/v1/query; returns the whole answer (status, data or error)."""
        params = urllib.parse.urlencode({"query": expr})
        try:
            return get_json(f"{self.url}/api/v1/query?{params}")
        except urllib.error.HTTPError as exc:  # 400: the expression does not parse
            return json.loads(exc.read())

    def has_data(self, expr: str) -> bool:
        answer = self.query(expr)
        return answer["status"] == "success" and bool(answer["data"]["result"])


def stop(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM this process (started by the test), SIGKILL it if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def write_feed(folder: Path) -> None:
    """48 small sample images and 8 unusable objects (garbage and truncated JPEGs)."""
    generate_sample_images(folder, 48, seed=3, min_side=64, max_side=160, progress=False)
    rng = random.Random(0)
    good = sorted(folder.glob("*.jpg"))
    for i in range(4):
        (folder / f"garbage_{i}.jpg").write_bytes(rng.randbytes(2000))
        (folder / f"truncated_{i}.jpg").write_bytes(good[i].read_bytes()[:300])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prom, subprocess.Popen]]:
    binary = prometheus()
    tmp = tmp_path_factory.mktemp("observe")
    feed, labelled, ckpt = tmp / "feed", tmp / "labelled", tmp / "ckpt"
    write_feed(feed)
    make_labelled(labelled)
    ports = {"ray": free_port(), "seer-driver": free_port(), "seer-eval": free_port()}

    # deploy/prometheus.yml as shipped, with this test's ports, a 1 s scrape and the rules.
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(REPO / "deploy" / r) for r in config["rule_files"]]
    assert {job["job_name"] for job in config["scrape_configs"]} == set(ports)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_port = free_port()
    env = {**os.environ, **RUN_ENV}
    env.pop("RAY_ADDRESS", None)
    logs = {name: (tmp / f"{name}.log").open("w") for name in ("prometheus", "train", "eval")}
    procs: list[tuple[subprocess.Popen[Any], float]] = []
    try:
        procs.append((subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
             "--log.level=warn"],
            stdout=logs["prometheus"], stderr=subprocess.STDOUT), 30))
        train = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "pretrain", "--max-minutes", "6",
             *[a for kv in TINY for a in ("--set", kv)],
             "--set", "train.num_workers=2", "--set", "train.cpus_per_worker=0.5",
             "--set", "swav.queue_length=16", "--set", "swav.freeze_prototypes_steps=2",
             "--set", "schedule.warmup_steps=2", "--set", "train.log_every_steps=1",
             "--set", f"feed.uri={feed}", "--set", "ingest.actors=1",
             "--set", "ingest.cpus_per_actor=0.5", "--set", "ingest.read_tasks=1",
             "--set", "ingest.chunk_images=24", "--set", "ingest.read_task_cpus=0.25",
             "--set", f"checkpoint.storage={ckpt}", "--set", "checkpoint.every_steps=5",
             "--set", "checkpoint.every_minutes=0",
             "--set", f"metrics.export_port={ports['ray']}",
             "--set", f"metrics.status_port={ports['seer-driver']}"],
            cwd=tmp, env=env, stdout=logs["train"], stderr=subprocess.STDOUT)
        procs.append((train, 180))
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "services.cli", "eval", "--watch", "--interval", "2",
             "--max-polls", "1000", "--metrics-port", str(ports["seer-eval"]),
             "--metrics-addr", "127.0.0.1", "--data", str(labelled), "--protocol", "knn",
             *[a for kv in TINY for a in ("--set", kv)],
             "--set", f"checkpoint.storage={ckpt}", "--set", "eval.image_size=32",
             "--set", "eval.knn_k=[5]", "--set", "eval.device=cpu",
             "--set", "eval.torch_threads=1", "--set", "eval.batch_size=16"],
            cwd=tmp, env=env, stdout=logs["eval"], stderr=subprocess.STDOUT), 60))
        yield Prom(f"http://127.0.0.1:{prom_port}"), train
    finally:
        for proc, timeout in reversed(procs):  # the trainer writes its final checkpoint
            stop(proc, timeout)
        for f in logs.values():
            f.close()
        for name in logs:
            text = (tmp / f"{name}.log").read_text()
            print(f"--- {name} (last lines)\n" + "\n".join(text.splitlines()[-15:]))


def wait_for(prom: Prom, train: subprocess.Popen[Any], exprs: list[str]) -> list[str]:
    """Polls until every expression returns data; returns those that never did."""
    deadline = time.monotonic() + DEADLINE_S
    missing = list(exprs)
    while missing and time.monotonic() < deadline:
        assert train.poll() is None, "seer pretrain ended early (see its log below)"
        with contextlib.suppress(OSError):
            missing = [e for e in missing if not prom.has_data(e)]
        time.sleep(2)
    return missing


def test_prometheus_scrapes_the_run_and_every_panel_works(live) -> None:
    prom, train = live
    # The seer series, from each of deploy/prometheus.yml's targets.
    scraped = ['ray_seer_train_steps_total{job="ray"}', 'ray_seer_ingest_images_total{job="ray"}',
               'seer_cli_step{job="seer-driver"} > 0',
               'seer_eval_accuracy_percent{job="seer-eval", trunk="checkpoint"}']
    assert wait_for(prom, train, scraped) == []
    # All three targets up at one scrape: polled, as a loaded machine can time out one scrape.
    assert wait_for(prom, train, ['sum(up{job=~"ray|seer-driver|seer-eval"}) == 3']) == []

    core = core_titles()
    queries = panel_queries()
    assert {(uid, title) for uid, title, _ in queries} >= core
    missing = wait_for(prom, train, [fill_variables(e) for uid, t, e in queries
                                     if (uid, t) in core])
    assert missing == [], f"core panel queries without data: {missing}"
    for uid, title, expr in queries:  # every expression parses, core or not
        answer = prom.query(fill_variables(expr))
        assert answer["status"] == "success", (uid, title, answer.get("error"))

    # The alert rules are loaded and evaluate on real series without error.
    rules = [r for g in get_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
             for r in g["rules"]]
    shipped = yaml.safe_load((REPO / "deploy/alerts/seer-rules.yml").read_text())
    assert len(rules) == sum(len(g["rules"]) for g in shipped["groups"])
    deadline = time.monotonic() + 30
    while any(r.get("health") != "ok" for r in rules) and time.monotonic() < deadline:
        time.sleep(1)
        rules = [r for g in get_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
                 for r in g["rules"]]
    assert all(r.get("health") == "ok" for r in rules), [(r["name"], r.get("lastError"))
                                                          for r in rules]
