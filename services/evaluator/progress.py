"""Progress of long steps (loading the labelled set, extracting features) on stderr.

On a terminal: one line rewritten in place. Elsewhere (`ray job logs`, a pod log): nothing for
short steps, then one plain line every `every_s` seconds once a step has run that long, so
logs show that a long extraction is alive without filling up with carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """A `progress(done, total)` callable for load_labelled / extract_features."""

    def __init__(self, label: str, *, stream: TextIO | None = None, every_s: float = 10.0,
                 tty: bool | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = every_s
        self.start = time.monotonic()
        self.last = self.start
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        final = total > 0 and done >= total
        if self.tty:
            if now - self.last < 0.1 and not final:
                return
        elif now - self.last < self.every_s and not (final and self.shown):
            return
        self.last = now
        rate = done / elapsed if elapsed > 0 else 0.0
        pct = f" ({100.0 * done / total:.0f}%)" if total else ""
        text = f"{self.label}: {done}/{total}{pct}, {rate:.1f}/s, {elapsed:.0f} s"
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = True
