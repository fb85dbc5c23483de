"""services.train_metrics: counters count what each worker did, so sums over workers are global."""

from __future__ import annotations

from types import SimpleNamespace

from seer_core.training import StepResult
from services.metrics import REGISTRY
from services.train_metrics import TrainMetrics


def _result(step: int, world: int, batch: int, skipped: bool = False) -> StepResult:
    return StepResult(loss=float("nan") if skipped else 6.0, lr=0.1, skipped=skipped, step=step,
                      images_seen=step * world * batch, usage_entropy=0.9, seconds=0.2,
                      loss_seconds=0.01, embedding_rank=12.5)


def test_images_counter_sums_to_the_global_count_over_workers() -> None:
    world, batch = 2, 4
    workers = [TrainMetrics(rank) for rank in (0, 1)]

    def value(name: str, worker: str) -> float:
        return REGISTRY.get_sample_value(name, {"worker": worker}) or 0.0

    state = SimpleNamespace(queue=None)
    for step in range(1, 6):
        skipped = step == 3  # a skipped step trained on nothing
        for worker in workers:
            worker.observe(state, _result(step, world, batch, skipped), 0.0, local_images=batch)
    trained = {r: value("seer_train_images_total", r) for r in ("0", "1")}
    assert trained == {"0": 4 * batch, "1": 4 * batch}  # steps 1, 2, 4, 5: the first counts
    assert sum(trained.values()) == 4 * world * batch
    assert value("seer_train_skipped_steps_total", "0") == 1


def test_fp16_overflow_skip_is_a_skip_and_the_loss_scale_a_gauge() -> None:
    """Issue 17 point 8: a step the grad scaler skipped trained on nothing (its images are not
    counted) and shows as a skip; the scale is exported so a dashboard sees it fall."""
    worker = TrainMetrics(2)  # the process's one registry: a rank no other test uses
    state = SimpleNamespace(queue=None)
    steps = [(1, False, 65536.0), (2, True, 32768.0), (3, False, 32768.0)]
    scales = []
    for step, overflow, scale in steps:
        result = StepResult(loss=6.0, lr=0.1, skipped=overflow, step=step, images_seen=step * 4,
                            usage_entropy=0.9, seconds=0.2, loss_seconds=0.01,
                            overflow=overflow, loss_scale=scale)
        worker.observe(state, result, 0.0, local_images=4)
        scales.append(REGISTRY.get_sample_value("seer_train_loss_scale", {"worker": "2"}))
    assert scales == [65536.0, 32768.0, 32768.0]
    assert REGISTRY.get_sample_value("seer_train_images_total", {"worker": "2"}) == 8
    assert REGISTRY.get_sample_value("seer_train_skipped_steps_total", {"worker": "2"}) == 1


def test_no_loss_scale_series_without_a_scaler() -> None:
    TrainMetrics(3).observe(SimpleNamespace(queue=None), _result(1, 1, 4), 0.0, local_images=4)
    assert REGISTRY.get_sample_value("seer_train_loss_scale", {"worker": "3"}) is None
    assert REGISTRY.get_sample_value("seer_train_steps_total", {"worker": "3"}) == 1


def test_embedding_rank_gauge_follows_measured_steps_only() -> None:
    worker, state = TrainMetrics(4), SimpleNamespace(queue=None)
    worker.observe(state, _result(1, 1, 4), 0.0, local_images=4)
    assert REGISTRY.get_sample_value("seer_train_embedding_rank", {"worker": "4"}) == 12.5
    unmeasured = StepResult(loss=6.0, lr=0.1, skipped=False, step=2, images_seen=8,
                            usage_entropy=0.9, seconds=0.2, loss_seconds=0.01)
    worker.observe(state, unmeasured, 0.0, local_images=4)  # NaN: the last figure stays
    assert REGISTRY.get_sample_value("seer_train_embedding_rank", {"worker": "4"}) == 12.5
