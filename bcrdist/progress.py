"""Progress through a known amount of work: a tqdm bar on a terminal, plain lines otherwise (batch logs).

One display for the long-running jobs (training epochs, data generation). On a terminal the bar shows the
postfix (e.g. the loss); elsewhere a line "LABEL: DONE/TOTAL UNITs, RATE s/UNIT, ETA min left[, POSTFIX]"
goes to `emit` every `every_s` seconds and whenever `update(..., force=True)` asks for one.
"""

from __future__ import annotations

import sys
import time
from typing import Callable


class Progress:
    """`total` units of work labelled `label`; disabled displays (other ranks) print nothing."""

    def __init__(self, total: int, label: str, *, unit: str = "step", enabled: bool = True,
                 every_s: float | None = None, emit: Callable[[str], None] | None = None, stream=None):
        self.total, self.label, self.unit, self.enabled, self.every_s = total, label, unit, enabled, every_s
        self.done = self.skipped = 0
        self.start = self.last = time.monotonic()
        stream = stream if stream is not None else sys.stderr
        self.emit = emit or (lambda line: print(line, file=stream, flush=True))
        self.bar = None
        if enabled and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit=unit, leave=False, dynamic_ncols=True, file=stream)

    def update(self, count: int = 1, *, postfix: str = "", force: bool = False, skipped: bool = False) -> None:
        """`count` more units done (`skipped`: done without work, left out of the rate)."""
        self.done += count
        self.skipped += count if skipped else 0
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(count)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.monotonic()
        if force or (self.every_s is not None and now - self.last >= self.every_s):
            self.last = now
            self.emit(self.line(now, postfix))

    def line(self, now: float, postfix: str = "") -> str:
        rate = (now - self.start) / max(self.done - self.skipped, 1)
        left = rate * (self.total - self.done) / 60
        extra = f", {postfix}" if postfix else ""
        return (f"{self.label}: {self.done}/{self.total} {self.unit}s, {rate:.3f} s/{self.unit}, "
                f"{left:.1f} min left{extra}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
