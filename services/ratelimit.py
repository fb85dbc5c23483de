"""Rate-limited logging, shared by the feed and the ingest stage.

A never-ending job meets the same failure (a store outage, a stream of corrupt images) thousands
of times an hour: logging each one drowns the log and costs CPU in the hot path, logging none
hides the problem. So: at most one line per *reason* per interval, and the next line that gets
through says how many were swallowed, so the rate stays visible.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLogger:
    """Logs at most one line per reason per ``interval_s``, counting the ones it suppresses.

    Reasons should be a small, bounded set of strings (``"list-error"``, ``"vanished"``): one
    entry per reason is kept for the life of the process.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s!r}")
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        # reason -> (time of the last emitted line, lines suppressed since then)
        self._state: dict[str, tuple[float, int]] = {}

    def log(self, level: int, reason: str, msg: str, *args: object) -> bool:
        """Logs ``msg % args`` unless ``reason`` was logged less than ``interval_s`` ago.

        Returns whether the line was emitted, so callers can attach costly detail (a traceback)
        only to the lines that get through.
        """
        now = self._clock()
        with self._lock:
            last, suppressed = self._state.get(reason, (None, 0))
            if last is not None and now - last < self.interval_s:
                self._state[reason] = (last, suppressed + 1)
                return False
            self._state[reason] = (now, 0)
        if suppressed and last is not None:
            msg = f"{msg} (%d similar suppressed in the last %.0fs)"
            args = (*args, suppressed, now - last)
        self.logger.log(level, msg, *args)
        return True

    info = functools.partialmethod(log, logging.INFO)
    warning = functools.partialmethod(log, logging.WARNING)
    error = functools.partialmethod(log, logging.ERROR)
