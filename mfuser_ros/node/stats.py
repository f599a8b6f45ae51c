"""Per-camera statistics and the /diagnostics status built from them, independent of any ROS transport.

Counters are updated from subscription callbacks (input, drops) and from the worker thread (outputs, errors,
timings), so every update takes the camera's lock; each is O(1). Windowed values (rates, percentiles) are computed
only when a diagnostics snapshot is taken.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ERROR",
    "OK",
    "STALE",
    "WARN",
    "CameraSnapshot",
    "CameraStats",
    "DiagnosticStatusData",
    "DiagnosticThresholds",
    "build_statuses",
]

# diagnostic_msgs/DiagnosticStatus levels.
OK, WARN, ERROR, STALE = 0, 1, 2, 3


@dataclass(frozen=True)
class CameraSnapshot:
    """Values of one camera over the last window (rates in Hz, times in ms) plus totals since start."""

    input_fps: float
    output_fps: float
    processing_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    frames_in: int
    frames_out: int
    dropped: int
    errors: int
    recent_errors: int
    last_error: str
    clock_skew: int = 0  # outputs whose stamp was further than the limit from the node's clock (not in latency)
    recent_clock_skew: int = 0
    last_clock_skew_ms: float = 0.0  # now - stamp of the last such frame (negative: stamped in the future)


class CameraStats:
    """Thread-safe counters and time windows for one camera.

    Args:
        window_s: length of the window for rates and percentiles.
        clock: monotonic clock in seconds (injectable for tests).
        clock_skew_limit_ms: an output whose latency (now - stamp) is beyond this either way says nothing about
            latency: the camera's clock (or the node's) is wrong. It is counted as clock skew instead.
    """

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 clock_skew_limit_ms: float = 60_000.0) -> None:
        self.window_s = window_s
        self.clock_skew_limit_ms = clock_skew_limit_ms
        self._clock = clock
        self._lock = threading.Lock()
        self._inputs: deque[float] = deque()
        self._outputs: deque[float] = deque()
        self._processing: deque[tuple[float, float]] = deque()
        self._latency: deque[tuple[float, float]] = deque()
        self._errors: deque[float] = deque()
        self._skewed: deque[float] = deque()
        self.clock_skew = 0
        self.last_clock_skew_ms = 0.0
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.errors = 0
        self.last_error = ""

    def _trim(self, now: float) -> None:
        start = now - self.window_s
        for window in (self._inputs, self._outputs, self._errors, self._skewed):
            while window and window[0] < start:
                window.popleft()
        for window in (self._processing, self._latency):
            while window and window[0][0] < start:
                window.popleft()

    def record_input(self, dropped_older: bool) -> None:
        """A message arrived; ``dropped_older`` when it replaced one the worker never took."""
        now = self._clock()
        with self._lock:
            self.frames_in += 1
            self.dropped += int(dropped_older)
            self._inputs.append(now)
            self._trim(now)

    def record_output(self, processing_ms: float, latency_ms: float) -> bool:
        """A frame's outputs were published; False when its latency was clock skew (left out of the statistics)."""
        now = self._clock()
        counted = abs(latency_ms) <= self.clock_skew_limit_ms
        with self._lock:
            self.frames_out += 1
            self._outputs.append(now)
            self._processing.append((now, processing_ms))
            if counted:
                self._latency.append((now, latency_ms))
            else:
                self.clock_skew += 1
                self.last_clock_skew_ms = latency_ms
                self._skewed.append(now)
            self._trim(now)
        return counted

    def record_error(self, reason: str) -> None:
        """A frame was skipped (malformed message or model failure)."""
        now = self._clock()
        with self._lock:
            self.errors += 1
            self.last_error = reason
            self._errors.append(now)
            self._trim(now)

    def snapshot(self) -> CameraSnapshot:
        """Current window values and totals."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            latency = np.array([v for _, v in self._latency], dtype=np.float64)
            processing = [v for _, v in self._processing]
            return CameraSnapshot(
                input_fps=len(self._inputs) / self.window_s,
                output_fps=len(self._outputs) / self.window_s,
                processing_ms=float(np.mean(processing)) if processing else 0.0,
                latency_p50_ms=float(np.percentile(latency, 50)) if latency.size else 0.0,
                latency_p95_ms=float(np.percentile(latency, 95)) if latency.size else 0.0,
                frames_in=self.frames_in,
                frames_out=self.frames_out,
                dropped=self.dropped,
                errors=self.errors,
                recent_errors=len(self._errors),
                last_error=self.last_error,
                clock_skew=self.clock_skew,
                recent_clock_skew=len(self._skewed),
                last_clock_skew_ms=self.last_clock_skew_ms,
            )


@dataclass(frozen=True)
class DiagnosticThresholds:
    """Levels from parameters: p95 latency WARN/ERROR and a minimum output rate (0 disables)."""

    latency_warn_ms: float = 500.0
    latency_error_ms: float = 2000.0
    min_output_fps_warn: float = 0.0


@dataclass(frozen=True)
class DiagnosticStatusData:
    """Transport-free diagnostic_msgs/DiagnosticStatus: adapters copy the fields into their message type."""

    level: int
    name: str
    message: str
    hardware_id: str
    values: dict[str, str] = field(default_factory=dict)


def _level(snap: CameraSnapshot, limits: DiagnosticThresholds, active: bool) -> tuple[int, str]:
    if not active:
        return STALE, "model not active"
    if snap.latency_p95_ms >= limits.latency_error_ms:
        return ERROR, f"latency p95 {snap.latency_p95_ms:.0f} ms >= {limits.latency_error_ms:.0f} ms"
    problems = []
    if snap.latency_p95_ms >= limits.latency_warn_ms:
        problems.append(f"latency p95 {snap.latency_p95_ms:.0f} ms >= {limits.latency_warn_ms:.0f} ms")
    if limits.min_output_fps_warn > 0 and snap.input_fps > 0 and snap.output_fps < limits.min_output_fps_warn:
        problems.append(f"output {snap.output_fps:.1f} Hz < {limits.min_output_fps_warn:.1f} Hz")
    if snap.recent_clock_skew:
        offset_s = snap.last_clock_skew_ms / 1e3
        problems.append(f"{snap.recent_clock_skew} frames stamped far from the node's clock (last: "
                        f"{abs(offset_s):.3g} s {'behind' if offset_s > 0 else 'ahead'}; clock skew, not in latency)")
    if snap.recent_errors:
        problems.append(f"{snap.recent_errors} bad frames in window (last: {snap.last_error})")
    if problems:
        return WARN, "; ".join(problems)
    if snap.input_fps == 0:
        return OK, "no input"
    return OK, "ok"


def build_statuses(node_name: str, cameras: list[str], snapshots: list[CameraSnapshot],
                   limits: DiagnosticThresholds, active: bool = True) -> list[DiagnosticStatusData]:
    """One status per camera, named ``<node>: <camera> segmentation``, with every statistic as a key/value."""
    statuses = []
    for camera, snap in zip(cameras, snapshots, strict=True):
        level, message = _level(snap, limits, active)
        values = {
            "input_fps": f"{snap.input_fps:.2f}",
            "output_fps": f"{snap.output_fps:.2f}",
            "processing_ms": f"{snap.processing_ms:.2f}",
            "latency_p50_ms": f"{snap.latency_p50_ms:.2f}",
            "latency_p95_ms": f"{snap.latency_p95_ms:.2f}",
            "frames_in": str(snap.frames_in),
            "frames_out": str(snap.frames_out),
            "dropped": str(snap.dropped),
            "errors": str(snap.errors),
            "clock_skew": str(snap.clock_skew),
        }
        statuses.append(DiagnosticStatusData(level, f"{node_name}: {camera or '/'} segmentation", message,
                                             node_name, values))
    return statuses
