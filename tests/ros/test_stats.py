"""Per-camera statistics and the diagnostic levels derived from them."""

from __future__ import annotations

import pytest

from mfuser_ros.node.stats import ERROR, OK, STALE, WARN, CameraStats, DiagnosticThresholds, build_statuses


class FakeClock:
    """A settable monotonic clock (time is the one thing tests must control)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rates_percentiles_and_counters_over_the_window():
    clock = FakeClock()
    stats = CameraStats(window_s=2.0, clock=clock)
    for i in range(10):
        clock.now = 100.0 + 0.1 * i
        stats.record_input(dropped_older=i % 2 == 1)
    for latency in (10.0, 20.0, 30.0, 40.0):
        stats.record_output(processing_ms=5.0, latency_ms=latency)
    stats.record_error("malformed")
    snap = stats.snapshot()
    assert snap.input_fps == pytest.approx(10 / 2.0)
    assert snap.output_fps == pytest.approx(4 / 2.0)
    assert snap.latency_p50_ms == pytest.approx(25.0)
    assert snap.latency_p95_ms == pytest.approx(38.5)
    assert snap.processing_ms == pytest.approx(5.0)
    assert (snap.frames_in, snap.frames_out, snap.dropped, snap.errors) == (10, 4, 5, 1)
    clock.now += 10.0  # everything leaves the window, totals stay
    snap = stats.snapshot()
    assert (snap.input_fps, snap.output_fps, snap.recent_errors) == (0.0, 0.0, 0)
    assert (snap.frames_in, snap.dropped, snap.errors) == (10, 5, 1)


LIMITS = DiagnosticThresholds(latency_warn_ms=100.0, latency_error_ms=1000.0, min_output_fps_warn=5.0)


def level_for(latency_ms=0.0, errors=0, input_fps=True, output_fps=True, active=True, limits=LIMITS):
    clock = FakeClock()
    stats = CameraStats(window_s=1.0, clock=clock)
    if input_fps:
        for _ in range(10):
            stats.record_input(False)
    if output_fps:
        for _ in range(10):
            stats.record_output(1.0, latency_ms)
    for _ in range(errors):
        stats.record_error("malformed")
    (status,) = build_statuses("/seg", ["front"], [stats.snapshot()], limits, active)
    return status


def test_levels_follow_the_thresholds():
    assert level_for().level == OK
    assert level_for(latency_ms=150.0).level == WARN
    assert level_for(latency_ms=1500.0).level == ERROR
    assert level_for(errors=2).level == WARN
    assert "2 bad frames" in level_for(errors=2).message
    assert level_for(output_fps=False).level == WARN
    assert level_for(active=False).level == STALE


def test_status_names_the_node_and_camera_and_lists_every_statistic():
    status = level_for()
    assert status.name == "/seg: front segmentation"
    assert status.hardware_id == "/seg"
    assert set(status.values) == {"input_fps", "output_fps", "processing_ms", "latency_p50_ms", "latency_p95_ms",
                                  "frames_in", "frames_out", "dropped", "errors", "clock_skew"}


def test_stamps_far_from_the_clock_are_counted_as_clock_skew_and_kept_out_of_latency():
    clock = FakeClock()
    stats = CameraStats(window_s=5.0, clock=clock, clock_skew_limit_ms=60_000.0)
    for _ in range(10):
        stats.record_input(False)
    for latency in (20.0, 40.0):
        assert stats.record_output(1.0, latency) is True
    epoch_ms = 1.8e12  # a frame stamped sec=0 by a camera that never set its clock
    assert stats.record_output(1.0, epoch_ms) is False
    assert stats.record_output(1.0, -120_000.0) is False  # two minutes in the future
    snap = stats.snapshot()
    assert (snap.frames_out, snap.clock_skew, snap.recent_clock_skew) == (4, 2, 2)
    assert snap.last_clock_skew_ms == -120_000.0
    assert snap.latency_p95_ms == pytest.approx(39.0)
    (status,) = build_statuses("/seg", ["front"], [snap], LIMITS)
    assert status.level == WARN, "clock skew warns; it must not hold the camera at ERROR"
    assert "2 frames stamped far from the node's clock" in status.message
    assert status.values["clock_skew"] == "2"
