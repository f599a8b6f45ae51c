"""LatencySketch: percentiles within their stated accuracy, and merging that equals sketching all samples at once."""

from __future__ import annotations

import numpy as np
import pytest

from mfuser_ros.replay.latency_sketch import LatencySketch


@pytest.mark.parametrize("q", [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 1.0])
def test_quantiles_are_within_the_relative_accuracy_of_the_exact_order_statistic(q):
    samples = np.random.default_rng(0).lognormal(mean=3.0, sigma=1.0, size=5000)
    sketch = LatencySketch(0.01).extend(samples)
    exact = float(np.quantile(samples, q, method="lower"))
    assert sketch.quantile(q) == pytest.approx(exact, rel=0.01 + 1e-12)
    assert sketch.count == 5000 and sketch.max == samples.max() and sketch.min == samples.min()


def test_merged_sketches_equal_one_sketch_of_all_samples_and_averaged_percentiles_do_not():
    rng = np.random.default_rng(1)
    fast_long_drive = rng.normal(50, 2, size=2000).clip(1)
    slow_short_drive = rng.normal(400, 20, size=100).clip(1)
    a, b = LatencySketch().extend(fast_long_drive), LatencySketch().extend(slow_short_drive)
    together = LatencySketch().extend(np.concatenate([fast_long_drive, slow_short_drive]))
    merged = LatencySketch().merge(a).merge(b)
    assert merged.bins == together.bins and merged.count == together.count
    assert merged.total == pytest.approx(together.total)
    exact_p95 = float(np.quantile(np.concatenate([fast_long_drive, slow_short_drive]), 0.95, method="lower"))
    assert merged.quantile(0.95) == pytest.approx(exact_p95, rel=0.0051)
    averaged = (a.quantile(0.95) + b.quantile(0.95)) / 2  # the wrong way: about 4x too high here
    assert abs(averaged - exact_p95) / exact_p95 > 1.0


def test_round_trip_zero_values_and_bad_input():
    sketch = LatencySketch().extend([0.0, 0.0, 1.5, 2.5, 1000.0])
    back = LatencySketch.from_dict(sketch.to_dict())
    assert back.to_dict() == sketch.to_dict()
    assert back.quantile(0.0) == 0.0 and back.quantile(1.0) == 1000.0
    assert back.summary()["mean"] == pytest.approx(1004.0 / 5)
    assert LatencySketch().summary() == {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    with pytest.raises(ValueError, match=">= 0"):
        sketch.add(float("nan"))
    with pytest.raises(ValueError, match="relative accuracy"):
        LatencySketch(0.01).merge(LatencySketch(0.02))
    broken = sketch.to_dict()
    broken["count"] = 99
    with pytest.raises(ValueError, match="do not add up"):
        LatencySketch.from_dict(broken)
    with pytest.raises(ValueError, match="not a latency sketch"):
        LatencySketch.from_dict({"bins": {}})
