"""Progress of long runs as periodic log lines (count, rate, ETA): they work where no terminal is, in a log file
or a pipe, which a progress bar does not. ``mfuser-eval`` reports images, ``mfuser-replay`` frames; slide
inference reports the windows of an image through :meth:`ProgressLog.partial`, so a large image is not silent.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ProgressLog", "format_duration"]


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"2 h 07 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class ProgressLog:
    """Emits ``"<what>: 12/500 images (2.4%), 1.30 s/image, ETA 10 min 34 s"`` lines.

    A line goes out at the first item, at the last, and whenever ``interval_s`` passed since the previous one;
    :meth:`partial` (work within the current item, e.g. slide windows) counts towards the rate and the ETA.

    Args:
        total: items expected (None: unknown, then no percentage and no ETA).
        what: the line's prefix, e.g. the target's name.
        emit: where lines go (``logging.Logger.info``, a print to stderr, ...).
        unit: the item's name in the line.
        interval_s: least time between two lines (except the last).
        clock: seconds, monotonic (tests pass a fake).
    """

    def __init__(self, total: int | None, what: str, emit: Callable[[str], None], *, unit: str = "image",
                 interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.what = what
        self.emit = emit
        self.unit = unit
        self.interval_s = interval_s
        self.clock = clock
        self.done = 0
        self._part = (0, 0)  # (done, total) within the current item
        self._start = clock()
        self._last: float | None = None

    def update(self, n: int = 1) -> None:
        """``n`` more items are finished."""
        self.done += n
        self._part = (0, 0)
        last = self.total is not None and self.done >= self.total
        self._maybe_emit(force=last or self._last is None)

    def partial(self, done: int, total: int) -> None:
        """Progress within the item being worked on (``done`` of ``total`` steps)."""
        self._part = (done, total)
        self._maybe_emit(force=False)

    def _maybe_emit(self, force: bool) -> None:
        now = self.clock()
        if force or self._last is None or now - self._last >= self.interval_s:
            self._last = now
            self.emit(self.line(now))

    def line(self, now: float | None = None) -> str:
        """The current progress line."""
        now = self.clock() if now is None else now
        elapsed = now - self._start
        part_done, part_total = self._part
        progress = self.done + (part_done / part_total if part_total else 0.0)
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        text = f"{self.what}: {count} {self.unit}s"
        if self.total:
            text += f" ({100 * self.done / self.total:.1f}%)"
        if part_total and part_done < part_total:
            text += f", {self.unit} {self.done + 1}: window {part_done}/{part_total}"
        if progress > 0:
            per = elapsed / progress
            text += f", {per:.2f} s/{self.unit}" if per >= 1 else f", {1 / per:.1f} {self.unit}s/s"
            if self.total is not None and self.done < self.total:
                text += f", ETA {format_duration(per * (self.total - progress))}"
        if self.total is not None and self.done >= self.total:
            text += f", done in {format_duration(elapsed)}"
        return text
