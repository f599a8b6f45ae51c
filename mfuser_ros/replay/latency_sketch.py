"""A mergeable latency sketch: percentiles of many runs combined without keeping every sample.

Percentiles cannot be averaged: the p95 of two drives is not the mean of their p95s (a short drive with slow frames
and a long fast one show it at once). Summing histograms is exact, so every bag keeps a log-bucketed histogram of its
frame latencies (the scheme of DDSketch, Masson et al., VLDB 2019): value ``v > 0`` falls in bucket
``ceil(log(v) / log(gamma))`` with ``gamma = (1 + a) / (1 - a)``, and a bucket is reported by the value whose
relative distance to both of its edges is ``a``. Merging adds counts, so the sketch of a fleet equals the sketch of
all its samples, and any percentile read from it is within relative error ``a`` of the true order statistic
(``np.quantile(samples, q, method="lower")``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["DEFAULT_RELATIVE_ACCURACY", "LatencySketch"]

DEFAULT_RELATIVE_ACCURACY = 0.005  # 0.5 %: 1 ms vs 1.005 ms; about 1,400 buckets span 1 us .. 1,000 s
_SMALLEST = 1e-6  # ms; values at or below it are counted as zero (a latency cannot be negative)


class LatencySketch:
    """Log-bucketed histogram of non-negative values (ms) with exact count, sum, min and max.

    Args:
        relative_accuracy: ``a`` above; percentiles are within ``a`` of the true value, relatively.
    """

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        if not 0 < relative_accuracy < 1:
            msg = f"relative_accuracy must be in (0, 1), got {relative_accuracy}"
            raise ValueError(msg)
        self.relative_accuracy = relative_accuracy
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self.bins: dict[int, int] = {}
        self.zero_count = 0
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        """Count one sample (NaN and negative values are refused: they are not latencies)."""
        if not value >= 0:
            msg = f"latency sample must be >= 0, got {value}"
            raise ValueError(msg)
        if value <= _SMALLEST:
            self.zero_count += 1
        else:
            key = math.ceil(math.log(value) / self._log_gamma)
            self.bins[key] = self.bins.get(key, 0) + 1
        self.count += 1
        self.total += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def extend(self, values: Iterable[float]) -> LatencySketch:
        """Count every value; returns self."""
        for v in values:
            self.add(float(v))
        return self

    def merge(self, other: LatencySketch) -> LatencySketch:
        """Add another sketch's counts (same accuracy); returns self."""
        if not math.isclose(other.relative_accuracy, self.relative_accuracy):
            msg = (f"cannot merge a sketch of relative accuracy {other.relative_accuracy} into one of "
                   f"{self.relative_accuracy}")
            raise ValueError(msg)
        for key, n in other.bins.items():
            self.bins[key] = self.bins.get(key, 0) + n
        self.zero_count += other.zero_count
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0..1) of the samples counted, None when empty."""
        if not 0 <= q <= 1:
            msg = f"quantile must be in [0, 1], got {q}"
            raise ValueError(msg)
        if self.count == 0:
            return None
        rank = math.floor(q * (self.count - 1))  # the order statistic np.quantile(method="lower") returns
        if rank == 0 or rank == self.count - 1:  # the extremes are kept exactly
            return self.min if rank == 0 else self.max
        if rank < self.zero_count:
            return self.min
        seen = self.zero_count
        for key in sorted(self.bins):
            seen += self.bins[key]
            if seen > rank:
                value = 2 * self._gamma ** key / (self._gamma + 1)
                return min(max(value, self.min), self.max)
        return self.max

    def summary(self) -> dict[str, float | None]:
        """p50 / p95 / p99 / mean / max in ms, the keys of :func:`evaluation.latency_summary` (None when empty)."""
        if self.count == 0:
            return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
        return {"p50": self.quantile(0.50), "p95": self.quantile(0.95), "p99": self.quantile(0.99),
                "mean": self.total / self.count, "max": self.max}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (bucket keys as strings); :meth:`from_dict` reads it back exactly."""
        return {"relative_accuracy": self.relative_accuracy, "count": self.count, "sum": self.total,
                "min": self.min if self.count else None, "max": self.max if self.count else None,
                "zero_count": self.zero_count, "bins": {str(k): n for k, n in sorted(self.bins.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencySketch:
        """The sketch :meth:`to_dict` wrote.

        Raises:
            ValueError: a field is missing or the counts do not add up.
        """
        try:
            sketch = cls(float(data["relative_accuracy"]))
            sketch.bins = {int(k): int(n) for k, n in data["bins"].items()}
            sketch.zero_count = int(data["zero_count"])
            sketch.count = int(data["count"])
            sketch.total = float(data["sum"])
            if sketch.count:
                sketch.min, sketch.max = float(data["min"]), float(data["max"])
        except (KeyError, TypeError, AttributeError) as err:
            msg = f"not a latency sketch: {err!r}"
            raise ValueError(msg) from err
        if sketch.zero_count + sum(sketch.bins.values()) != sketch.count or min(sketch.bins.values(), default=1) < 1:
            msg = f"latency sketch counts do not add up to its count {sketch.count}"
            raise ValueError(msg)
        return sketch
