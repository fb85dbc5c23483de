"""services.train_metrics: counters count what each worker did, so sums over workers are global."""

from __future__ import annotations

from types import SimpleNamespace

import prometheus_client

from seer_core.training import StepResult
from services.train_metrics import TrainMetrics


def _result(step: int, world: int, batch: int, skipped: bool = False) -> StepResult:
    return StepResult(loss=float("nan") if skipped else 6.0, lr=0.1, skipped=skipped, step=step,
                      images_seen=step * world * batch, usage_entropy=0.9, seconds=0.2,
                      loss_seconds=0.01)


def test_images_counter_sums_to_the_global_count_over_workers() -> None:
    world, batch = 2, 4
    registry = prometheus_client.CollectorRegistry()
    workers = [TrainMetrics(rank, backend="prometheus", registry=registry) for rank in (0, 1)]

    def value(name: str, worker: str) -> float:
        return registry.get_sample_value(name, {"worker": worker}) or 0.0

    state = SimpleNamespace(queue=None)
    for step in range(1, 6):
        skipped = step == 3  # a skipped step trained on nothing
        for worker in workers:
            worker.observe(state, _result(step, world, batch, skipped), 0.0, local_images=batch)
    trained = {r: value("seer_train_images_total", r) for r in ("0", "1")}
    assert trained == {"0": 4 * batch, "1": 4 * batch}  # steps 1, 2, 4, 5: the first counts
    assert sum(trained.values()) == 4 * world * batch
    assert value("seer_train_skipped_steps_total", "0") == 1
