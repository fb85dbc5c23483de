"""`seer_eval_*` Prometheus gauges: the newest results of the evaluator, for dashboards/alerts.

Declared at import through services.metrics; the evaluator is a plain process (even under `ray
job submit`), so they land on the page it serves itself. Labels are bounded: protocol names come
from the config (knn20, linear, lowshot10pct, ...), metric is top1/top5/top1_std, trunk is
checkpoint/random, stage res4/res5, reason one of the error classes' reasons.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from services import metrics


class EvalGauges:
    """The evaluator's metrics; `serve()` starts the HTTP page on (addr, port)."""

    accuracy = metrics.gauge(
        "seer_eval_accuracy_percent", "newest evaluation result per protocol (percent)",
        ("protocol", "metric", "trunk", "stage"))
    step = metrics.gauge("seer_eval_checkpoint_step", "step of the newest evaluated checkpoint")
    images_seen = metrics.gauge(
        "seer_eval_images_seen", "images seen by the newest evaluated checkpoint")
    last_success = metrics.gauge(
        "seer_eval_last_success_timestamp_seconds", "UNIX time of the last evaluation")
    duration = metrics.gauge(
        "seer_eval_duration_seconds", "wall time of the last checkpoint evaluation")
    errors = metrics.counter(
        "seer_eval_errors_total", "failed polls/evaluations by reason", ("reason",))
    evaluations = metrics.counter("seer_eval_evaluations_total", "checkpoints evaluated")
    skipped = metrics.gauge(
        "seer_eval_labelled_skipped_images", "unreadable images skipped in the labelled set",
        ("reason",))

    def __init__(self) -> None:
        for unlabelled in (self.step, self.images_seen, self.last_success, self.duration,
                           self.evaluations):
            unlabelled.ready()  # on the page (0) from the start, as before the first result
        self.server: Any = None
        self._shown: dict[tuple[str, ...], int] = {}
        self._newest_step = -1

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serves /metrics; returns the bound port (port 0 picks a free one). Loopback unless
        told otherwise: all interfaces is a deployment's choice (the k8s manifests make it)."""
        self.server, _ = metrics.serve(port, addr=addr)
        return int(self.server.server_port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def show_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Sets the gauges from rows. The newest step wins: a checkpoint back-filled after a
        newer one (or rows read back from the file in any order) never turns them back."""
        for row in rows:
            labels = {"protocol": str(row["protocol"]), "metric": str(row["metric"]),
                      "trunk": str(row.get("trunk", "checkpoint")),
                      "stage": str(row.get("stage", "res5"))}
            key = tuple(labels.values())
            step = int(row.get("step") or 0)
            if step < self._shown.get(key, -1):
                continue
            self._shown[key] = step
            self.accuracy.set(float(row["value"]), labels)
            if labels["trunk"] == "checkpoint" and step >= self._newest_step:
                self._newest_step = step
                self.step.set(step)
                self.images_seen.set(int(row.get("images_seen") or 0))

    def success(self, seconds: float) -> None:
        self.duration.set(seconds)
        self.last_success.set(time.time())
        self.evaluations.inc()

    def error(self, reason: str) -> None:
        self.errors.inc(1, {"reason": reason})

    def skipped_images(self, skipped: dict[str, int]) -> None:
        for reason, count in skipped.items():
            self.skipped.set(count, {"reason": reason})
