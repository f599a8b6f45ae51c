"""Replay progress on stderr: a tqdm bar on a terminal, periodic log lines (frames, rate, ETA) everywhere else,
so a replay run from a script or a job scheduler is not silent (a bar writes nothing useful into a log)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from mfuser_model.progress import ProgressLog

__all__ = ["LOG_INTERVAL_S", "ReplayProgress"]

LOG_INTERVAL_S = 10.0  # between two progress lines when stderr is not a terminal


class ReplayProgress:
    """Progress of one replay (``enabled=False``: silent; warnings still go to stderr).

    Args:
        total: camera frames expected (None: unknown).
        enabled: report progress at all.
        stream: where it goes (default ``sys.stderr``); a bar only if it is a terminal.
        interval_s: least time between two log lines.
    """

    def __init__(self, total: int | None, enabled: bool, *, stream: TextIO | None = None,
                 interval_s: float = LOG_INTERVAL_S) -> None:
        self.stream = stream or sys.stderr
        self.bar = None
        self.log: ProgressLog | None = None
        self._segmenter: Any = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=total, unit="frame", desc="replay", dynamic_ncols=True, file=self.stream,
                            smoothing=0.1)
        elif enabled:
            self.log = ProgressLog(total, "mfuser-replay", self._print, unit="frame", interval_s=interval_s)

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def watch(self, segmenter: Any) -> None:
        """Count ``segmenter``'s slide windows in the log lines (a large frame takes many), until :meth:`close`."""
        if self.log is not None and hasattr(segmenter, "on_window"):
            self._segmenter = segmenter
            segmenter.on_window = self.log.partial

    def update(self) -> None:
        """One more camera frame handed to the pipeline."""
        if self.bar is not None:
            self.bar.update(1)
        elif self.log is not None:
            self.log.update()

    def write(self, text: str) -> None:
        """A warning, printed above the bar when there is one."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self._print(text)

    def close(self) -> None:
        """End the bar; the log's last line says how far the replay got."""
        if self._segmenter is not None:
            self._segmenter.on_window = None
            self._segmenter = None
        if self.bar is not None:
            self.bar.close()
        elif self.log is not None and (self.log.total is None or self.log.done < self.log.total):
            self._print(self.log.line() + " (stopped)")
