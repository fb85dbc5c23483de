"""An elastic run (`train.num_workers: [1, 2]`) on a multi-node Ray staged on this machine.

Run as ``python -m tests.integration.elastic_run WORKDIR``; prints one JSON line. It needs a Ray
of its own (several raylets: ``ray.cluster_utils.Cluster``, the way Ray tests itself), so it
runs in a subprocess of the test (`test_elastic.py`), never in the session's Ray.

A head node without CPUs (driver, control actor, Ray Train's controller) and two one-CPU worker
nodes, one Train worker each; everything on 127.0.0.1. The run trains on two workers, loses a
node (its raylet and processes killed), trains on one, gets a node back and trains on two again.
Progress (step, world size) is sampled from the run's control actor all along.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

STEP_TIMEOUT_S = 180


def config(workdir: Path) -> Any:
    from seer_core.config import load_config

    return load_config("local", [
        "model.trunk=tiny", "model.head_hidden=[32]", "model.head_out=16",
        "model.prototypes=32", "augment.global_size=32", "augment.local_size=16",
        "augment.min_side=16", "train.batch_size=4", "train.num_workers=[1, 2]",
        "train.cpus_per_worker=1", "train.torch_threads=1", "train.resize_check_s=5",
        "train.log_every_steps=1", "swav.queue_length=16", "swav.queue_start_step=0",
        "swav.freeze_prototypes_steps=2", "schedule.name=constant", "schedule.warmup_steps=0",
        f"checkpoint.storage={workdir / 'checkpoints'}", "checkpoint.run_name=elastic",
        "checkpoint.every_steps=3", "checkpoint.keep=20", "checkpoint.every_minutes=0",
        "metrics.enabled=false", "metrics.status_port=0",
    ])


class Sampler(threading.Thread):
    """Records (time, step, world size) from the control actor's progress every 0.2 s."""

    def __init__(self, run_name: str) -> None:
        super().__init__(daemon=True)
        self.run_name = run_name
        self.samples: list[tuple[float, int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        import ray

        from services.driver.control import find_control

        while not self.done.wait(0.2):
            control = find_control(self.run_name)
            if control is None:
                continue
            try:
                p = ray.get(control.progress.remote(), timeout=5)
            except Exception:  # busy: the next sample will tell
                continue
            if "step" in p and "world_size" in p:
                sample = (time.monotonic(), int(p["step"]), int(p["world_size"]))
                if not self.samples or self.samples[-1][1:] != sample[1:]:
                    self.samples.append(sample)

    def wait_for(self, world: int, past_step: int, what: str) -> int:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.samples and self.samples[-1][2] == world and self.samples[-1][1] > past_step:
                return self.samples[-1][1]
            time.sleep(0.2)
        raise TimeoutError(f"{what}: no step past {past_step} on {world} worker(s) within "
                           f"{STEP_TIMEOUT_S} s; samples {self.samples[-5:]}")


def main(workdir: Path) -> dict[str, Any]:
    from ray.cluster_utils import Cluster

    from seer_core.checkpoint import COMMIT_FILE
    from services.driver.local_ray import free_loopback_port, use_loopback
    from services.driver.pretrain import run_pretraining
    from services.storage import resolve_storage

    use_loopback()
    port = free_loopback_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # every process of this cluster finds it
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    node = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 0})
    nodes = [cluster.add_node(**node, num_cpus=1) for _ in range(2)]
    cfg = config(workdir)
    storage = resolve_storage(cfg.checkpoint.storage, cfg.checkpoint.run_name)
    outcome: list[Any] = []
    errors: list[str] = []

    def train() -> None:
        try:
            outcome.append(run_pretraining(cfg, address=cluster.address, synthetic=True,
                                           install_signals=False))
        except BaseException as exc:  # reported in the JSON line
            errors.append(repr(exc))

    thread = threading.Thread(target=train, daemon=True)
    sampler = Sampler(cfg.checkpoint.run_name)
    report: dict[str, Any] = {}
    thread.start()
    try:
        import ray

        while not ray.is_initialized():
            time.sleep(0.2)
        sampler.start()
        sampler.wait_for(2, 6, "two workers")
        before_loss = max(s for s, _ in storage.list_checkpoints())
        report["committed_before_loss"] = before_loss
        cluster.remove_node(nodes.pop(), allow_graceful=False)  # a preempted node
        report["one_worker_step"] = sampler.wait_for(1, before_loss, "after losing a node")
        before_back = max(s for s, _ in storage.list_checkpoints())
        report["committed_before_back"] = before_back
        nodes.append(cluster.add_node(**node, num_cpus=1))  # the node comes back
        report["two_workers_again_step"] = sampler.wait_for(2, before_back + 3,
                                                            "after the node came back")
        from services.driver.control import find_control

        ray.get(find_control(cfg.checkpoint.run_name).request_stop.remote("test"))
        thread.join(timeout=STEP_TIMEOUT_S)
    except Exception as exc:  # reported in the JSON line
        errors.append(repr(exc))
    finally:
        sampler.done.set()
        report["samples"] = [(step, world) for _, step, world in sampler.samples]
        report["errors"] = errors
        report["outcome"] = outcome[0].metrics if outcome else None
        report["checkpoints"] = [
            {"step": step, **{k: storage.read_meta(path).get(k) for k in (
                "world_size", "resumed_step", "resumed_queue_filled")},
             "commit_world": (storage.read_json(f"{path}/{COMMIT_FILE}") or {}).get("world_size")}
            for step, path in storage.list_checkpoints()]
        with __import__("contextlib").suppress(Exception):
            import ray

            ray.shutdown()
        cluster.shutdown()
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
