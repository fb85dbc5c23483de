"""Elastic workers (`train.num_workers: [1, 2]`) on a multi-node Ray staged on this machine.

The run (`tests/integration/elastic_run.py`, in a subprocess with a Ray cluster of its own:
a head and two one-CPU worker nodes, all on 127.0.0.1) loses a node, trains on one worker,
gets a node back and trains on two again: Ray Train restarts the group each time from the
newest committed checkpoint, the SwAV queue rows are dealt out over the new world size, and
nothing starts from scratch or goes missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import RAY_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_an_elastic_run_shrinks_and_grows_with_its_nodes(tmp_path: Path) -> None:
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "tests.integration.elastic_run", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    report = json.loads(lines[-1])
    assert report["errors"] == [], (report["errors"], done.stderr[-4000:])

    # The world size went 2 -> 1 -> 2 while the run went on.
    worlds = [world for _, world in report["samples"]]
    changes = [w for i, w in enumerate(worlds) if i == 0 or w != worlds[i - 1]]
    assert changes == [2, 1, 2], report["samples"]

    # Never from scratch, never below the newest committed step.
    lost, back = report["committed_before_loss"], report["committed_before_back"]
    after_loss = [s for s, w in report["samples"][worlds.index(1):]]
    assert min(after_loss) >= lost, report["samples"]
    checkpoints = report["checkpoints"]
    one = [c for c in checkpoints if c["world_size"] == 1]
    two = [c for c in checkpoints if c["world_size"] == 2 and c["step"] > back]
    assert one and two, checkpoints
    assert one[-1]["resumed_step"] >= lost and two[0]["resumed_step"] >= back, checkpoints
    assert all(c["commit_world"] == c["world_size"] for c in checkpoints)
    # The queue rows were dealt out: both ranks' 8 rows into one queue of 16, then back to 8.
    assert one[-1]["resumed_queue_filled"] == 16 and two[0]["resumed_queue_filled"] == 8

    # No committed checkpoint lost: every 3 steps, none missing between the oldest kept and the
    # last periodic one (the final one is the stop's).
    steps = [c["step"] for c in checkpoints]
    periodic = [s for s in steps if s % 3 == 0]
    assert periodic == list(range(periodic[0], periodic[-1] + 1, 3)), steps
    assert report["outcome"]["step"] == steps[-1]
