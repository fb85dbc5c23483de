"""`seer pretrain` on a laptop: its own local Ray, a quiet terminal, workers' warnings relayed.

The session's ``ray_cluster`` stays up meanwhile: a second Ray instance on the machine is what
made Ray Train's placement-group cleaner address the wrong one ("Found multiple active Ray
instances") in a newcomer's first `make run`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

# What Ray prints when its output reaches the driver's terminal.
RAY_CHATTER = re.compile(
    r"\((TrainController|RayTrainWorker|PlacementGroupCleaner|SplitCoordinator|raylet)\b"
    r"|Failed to query Ray Train Controller|Found multiple active Ray instances|Traceback"
    r"|\bINFO\b"
)


def test_local_run_prints_only_seer_lines(ray_cluster, tmp_path: Path) -> None:
    args = [
        sys.executable, "-m", "services.cli", "pretrain", "--synthetic", "--max-steps", "3",
        "--set", "model.trunk=tiny", "--set", "model.head_hidden=[32]",
        "--set", "model.head_out=16", "--set", "model.prototypes=32",
        "--set", "augment.global_size=32", "--set", "augment.local_size=16",
        "--set", "train.batch_size=4", "--set", "train.torch_threads=1",
        "--set", "swav.queue_length=0", "--set", f"checkpoint.storage={tmp_path / 'ckpt'}",
        "--set", "checkpoint.every_steps=1000", "--set", "metrics.status_port=0",
        "--set", "metrics.export_port=0", "--set", "train.log_every_steps=1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert re.search(r"^step\s+3 \|", text, re.MULTILINE), text
    assert "stopped (limit) at step 3" in text, text
    noise = [line for line in text.splitlines() if RAY_CHATTER.search(line)]
    assert not noise, "\n".join(noise)

    # Ray's output went to the folder the banner names, of an instance of its own.
    logs = re.search(r"^  ray logs:\s+(\S+)", text, re.MULTILINE)
    assert logs, text
    folder = Path(logs.group(1))
    assert folder.is_dir() and any(folder.iterdir())
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    assert not str(folder).startswith(session), "the run joined the test session's Ray"


def test_worker_warnings_reach_the_driver(ray_cluster) -> None:
    import ray

    from services.driver.control import create_control, relay_warnings

    run = f"relay-{uuid.uuid4().hex[:6]}"
    control = create_control(run)
    logger_name = f"seer.test.{run}"
    try:
        relay = relay_warnings(run, "rank 1", logger_name=logger_name)
        assert relay is not None
        assert relay_warnings(run, "rank 1", logger_name=logger_name) is relay  # once per process
        log = logging.getLogger(logger_name)
        log.info("not relayed: below WARNING")
        log.warning("non-finite loss at step %d", 7)
        log.error("checkpoint %s unreadable", "step_9")
        notes: list[tuple[int, str]] = []
        for _ in range(50):
            notes = ray.get(control.notes.remote(0), timeout=30)
            if len(notes) >= 2:
                break
        assert [text for _, text in notes] == [
            "rank 1 WARNING: non-finite loss at step 7",
            "rank 1 ERROR: checkpoint step_9 unreadable",
        ]
        assert ray.get(control.notes.remote(notes[-1][0] + 1), timeout=30) == []
    finally:
        logging.getLogger(logger_name).handlers.clear()
        ray.kill(control)
