"""`seer eval --watch`: poll the checkpoint store, evaluate each new checkpoint once, for ever.

Each poll lists the run's checkpoints and evaluates the newest one not evaluated yet (so a busy
evaluator keeps up with the newest weights, and an idle one back-fills older checkpoints that
are still there). A step counts as done only once its rows are in the results file, so a
restarted evaluator skips what it already did, and a checkpoint that vanished, could not be
read, or failed to evaluate is retried at the next poll, unless a newer one came along.

Nothing that goes wrong in a poll stops the loop: the error is logged, counted in
`seer_eval_errors_total{reason}`, and the loop sleeps until the next poll. SIGTERM/SIGINT (set
`stop`) end it after the current evaluation.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from services.evaluator.checkpoints import CheckpointRef, list_refs
from services.evaluator.errors import EvaluatorError
from services.evaluator.results import done_steps
from services.evaluator.run import EvalSession, summary_line
from services.evaluator.settings import rows_for
from services.storage import RunStorage

log = logging.getLogger("seer.eval")


@dataclass
class WatchStats:
    polls: int = 0
    evaluated: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # reasons, in order


def next_checkpoint(refs: list[CheckpointRef], done: set[int]) -> CheckpointRef | None:
    """The newest checkpoint whose step is not done yet."""
    for ref in reversed(refs):
        if ref.step is not None and ref.step not in done:
            return ref
    return None


def poll(session: EvalSession, storage: RunStorage, done: set[int], stats: WatchStats) -> bool:
    """One poll; True when a checkpoint was evaluated. Never raises for a bad checkpoint/data."""
    stats.polls += 1
    ref: CheckpointRef | None = None
    try:
        ref = next_checkpoint(list_refs(storage), done)
        if ref is None:
            log.debug("poll %d: nothing new in %s", stats.polls, storage.display)
            return False
        start = time.perf_counter()
        rows, baseline, loaded = session.process(ref, run=storage.run_name)
    except Exception as exc:  # the evaluator must outlive anything one poll meets
        reason = exc.reason if isinstance(exc, EvaluatorError) else "error"
        what = ref.describe() if ref is not None else storage.display
        if isinstance(exc, EvaluatorError):
            log.error("eval: %s; retrying at the next poll", exc)
        else:
            log.exception("eval: %s failed (%s: %s); retrying at the next poll", what,
                          type(exc).__name__, exc)
        stats.errors.append(reason)
        if session.gauges is not None:
            session.gauges.error(reason)
        return False
    done.add(loaded.step)
    stats.evaluated.append(loaded.step)
    log.info("eval step %d (%d images seen, %s): %s in %.1f s", loaded.step, loaded.images_seen,
             session.settings.stage, summary_line(rows, baseline), time.perf_counter() - start)
    return True


def watch(session: EvalSession, storage: RunStorage, *, interval_s: float,
          stop: threading.Event | None = None, max_polls: int | None = None) -> WatchStats:
    """Polls until `stop` is set (or `max_polls` polls: tests, a scheduled one-shot job)."""
    stop = stop if stop is not None else threading.Event()
    key = session.evaluator.key
    done = done_steps(session.rows, storage.run_name, key)  # of the current settings only
    if session.gauges is not None:
        session.gauges.show_rows(rows_for(session.rows, storage.run_name, key))
    stats = WatchStats()
    log.info("eval: watching %s every %.0f s (%d step(s) already in the results)",
             storage.display, interval_s, len(done))
    while not stop.is_set():
        evaluated = poll(session, storage, done, stats)
        if max_polls is not None and stats.polls >= max_polls:
            break
        if not evaluated:  # after an evaluation, look again at once: a newer one may be there
            stop.wait(interval_s)
    return stats
