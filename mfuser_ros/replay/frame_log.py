"""Per-frame records of a replay: latency, and the frame's own accuracy when it had ground truth.

The report's tables say how a drive went; these rows say which frames to look at. ``frames.csv`` holds one row per
segmented frame, and :meth:`FrameLog.worst` picks the frames a human should open first (lowest frame mIoU, then
lowest pixel accuracy). A fleet job keeps each bag's latencies as a :class:`LatencySketch` and its worst frames.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mfuser_model.errors import MFuserError
from mfuser_model.fileio import atomic_path
from mfuser_model.metrics import ConfusionMatrix, MiouRule
from mfuser_ros.replay.latency_sketch import LatencySketch

__all__ = ["FrameLog", "FrameRecord", "read_frames_csv", "worst_frames"]


@dataclass
class FrameRecord:
    """One segmented frame.

    Attributes:
        camera: output namespace (``/cam_game``). index: the frame's position on its camera topic (0-based).
        stamp_ns: header stamp. latency_ms: as the report defines it (evaluation or real-time mode).
        pixels: ground-truth pixels scored (0: not evaluated). miou / accuracy: the frame's own mIoU and pixel
        accuracy (NaN when not evaluated, or no class is defined).
    """

    camera: str
    index: int
    stamp_ns: int
    latency_ms: float
    pixels: int = 0
    miou: float = math.nan
    accuracy: float = math.nan

    @property
    def evaluated(self) -> bool:
        """Whether the frame met its ground truth."""
        return self.pixels > 0


class FrameLog:
    """The frames of one replay, in the order their outputs came back; scores attach later by (camera, stamp).

    A frame's mIoU follows ``rule`` (the replay's ``--miou-rule``), as the run's own numbers do.
    """

    def __init__(self, rule: MiouRule = "mmseg") -> None:
        self.rule = rule
        self.records: list[FrameRecord] = []
        self._by_key: dict[tuple[str, int], FrameRecord] = {}

    def add(self, camera: str, index: int, stamp_ns: int, latency_ms: float) -> None:
        """A frame whose outputs were written."""
        record = FrameRecord(camera, index, stamp_ns, latency_ms)
        self.records.append(record)
        self._by_key[(camera, stamp_ns)] = record

    def score(self, camera: str, stamp_ns: int, frame_matrix: ConfusionMatrix) -> None:
        """The confusion matrix of one evaluated frame (ground truth may arrive before or after the outputs)."""
        record = self._by_key.get((camera, stamp_ns))
        if record is not None:
            record.pixels = int(frame_matrix.counts_array().sum())
            record.miou = frame_matrix.miou(self.rule)
            record.accuracy = frame_matrix.pixel_accuracy()

    def latency_sketches(self, relative_accuracy: float | None = None) -> dict[str, LatencySketch]:
        """Camera -> sketch of its frame latencies (mergeable across bags)."""
        out: dict[str, LatencySketch] = {}
        for r in self.records:
            if r.camera not in out:
                out[r.camera] = LatencySketch() if relative_accuracy is None else LatencySketch(relative_accuracy)
            out[r.camera].add(r.latency_ms)
        return out

    def worst(self, count: int) -> list[FrameRecord]:
        """Up to ``count`` evaluated frames, worst first (see :func:`worst_frames`)."""
        return worst_frames(self.records, count)

    def write_csv(self, path: Path) -> Path:
        """Write ``frames.csv`` atomically (one row per frame, NaN written as empty)."""
        names = [f.name for f in fields(FrameRecord)]
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            for r in self.records:
                row = asdict(r)
                writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row.values()])
        return path


def worst_frames(records: Iterable[FrameRecord], count: int) -> list[FrameRecord]:
    """The evaluated frames with the lowest frame mIoU (ties: lowest accuracy, then camera and index)."""
    scored = [r for r in records if r.evaluated and not math.isnan(r.miou)]
    scored.sort(key=lambda r: (r.miou, r.accuracy, r.camera, r.index))
    return scored[:max(0, count)]


def read_frames_csv(path: Path) -> list[FrameRecord]:
    """The records :meth:`FrameLog.write_csv` wrote.

    Raises:
        MFuserError: the file is missing, or a row is malformed (names the file and line).
    """
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        msg = f"{path}: cannot read the frame log: {err}"
        raise MFuserError(msg) from err
    out = []
    for line, row in enumerate(rows, start=2):
        try:
            out.append(FrameRecord(row["camera"], int(row["index"]), int(row["stamp_ns"]), float(row["latency_ms"]),
                                   int(row["pixels"]), _float(row["miou"]), _float(row["accuracy"])))
        except (KeyError, TypeError, ValueError) as err:
            msg = f"{path}:{line}: malformed frame row ({err})"
            raise MFuserError(msg) from err
    return out


def _float(text: str) -> float:
    return math.nan if text == "" else float(text)

