"""Per-bag results of a fleet job and their merge into one report (no Ray here: it reads and writes files).

Every bag's result is a :class:`BagRecord` (``fleet_result.json`` in its folder): per camera the raw confusion-matrix
counts, the number of frames, and a :class:`LatencySketch` of frame latencies; plus the bag's worst frames. Merging
sums counts and sketches, so the fleet's mIoU is the mIoU of the summed matrix (never a mean of bag mIoUs) and its
latency percentiles are those of all frames together (never a mean of bag percentiles). The worst frames of the fleet
are the worst of the bags' worst lists, which contain them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mfuser_model.errors import MFuserError
from mfuser_model.fileio import atomic_path
from mfuser_model.metrics import MIOU_RULES, ConfusionMatrix, MiouRule
from mfuser_model.report import class_table, percent
from mfuser_ros.replay.evaluation import metric_cells
from mfuser_ros.replay.frame_log import FrameRecord, worst_frames
from mfuser_ros.replay.latency_sketch import LatencySketch
from mfuser_ros.replay.options import EXIT_INTERRUPTED, EXIT_OK

if TYPE_CHECKING:
    from mfuser_ros.replay.runner import ReplayResult

__all__ = ["BAG_RESULT_FILE", "BagRecord", "CameraRecord", "bag_record_from_result", "failed_record",
           "merge_records", "read_bag_record", "write_bag_record", "write_fleet_report"]

BAG_RESULT_FILE = "fleet_result.json"  # written last, atomically: its presence means the bag is complete
RECORD_VERSION = 1
BagStatus = Literal["ok", "partial", "failed"]


@dataclass
class CameraRecord:
    """One camera of one bag: confusion counts ``(K, K+1)`` (see ConfusionMatrix.counts_array), frames, latency."""

    frames: int
    evaluated: int
    counts: np.ndarray
    latency: LatencySketch

    def matrix(self) -> ConfusionMatrix:
        """The counts as a ConfusionMatrix."""
        cm = ConfusionMatrix(self.counts.shape[0])
        cm.add_counts(self.counts)
        return cm


@dataclass
class BagRecord:
    """The result of one bag in a fleet job (``status`` ok / partial) or why it has none (failed).

    ``partial``: the replay finished but not the whole bag (a damaged bag); its frames count. ``failed``: nothing
    counts; ``reason`` says why, ``attempts`` how often it was tried.
    """

    bag: str
    bag_id: str
    status: BagStatus
    reason: str | None = None
    attempts: int = 1
    fingerprint: str = ""
    class_names: list[str] = field(default_factory=list)
    cameras: dict[str, CameraRecord] = field(default_factory=dict)
    worst_frames: list[FrameRecord] = field(default_factory=list)
    frames_read: int = 0
    frames_dropped: int = 0
    frames_failed: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    report: str = ""  # the bag's report.md, relative to the job's --out
    worker: dict[str, Any] = field(default_factory=dict)  # pid, node, model_loads: where it ran
    resumed: bool = False  # taken from an earlier run of the job (not stored)

    def matrix(self) -> ConfusionMatrix | None:
        """All cameras of the bag summed (None without cameras)."""
        total = None
        for cam in self.cameras.values():
            total = cam.matrix() if total is None else total.merge(cam.matrix())
        return total

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form; :meth:`from_dict` reads it back."""
        return {
            "version": RECORD_VERSION, "bag": self.bag, "bag_id": self.bag_id, "status": self.status,
            "reason": self.reason, "attempts": self.attempts, "fingerprint": self.fingerprint,
            "class_names": self.class_names,
            "cameras": {name: {"frames": c.frames, "evaluated": c.evaluated, "counts": c.counts.tolist(),
                               "latency_sketch": c.latency.to_dict()} for name, c in self.cameras.items()},
            "worst_frames": [_frame_dict(r) for r in self.worst_frames],
            "frames": {"read": self.frames_read, "dropped": self.frames_dropped, "failed": self.frames_failed},
            "wall_s": self.wall_s, "model_s": self.model_s, "report": self.report, "worker": self.worker,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "<record>") -> BagRecord:
        """The record :meth:`to_dict` wrote.

        Raises:
            MFuserError: not a record of this version, or a field is malformed (names ``where``).
        """
        try:
            if data["version"] != RECORD_VERSION:
                msg = f"{where}: record version {data['version']!r}, this tool reads {RECORD_VERSION}"
                raise MFuserError(msg)
            if data["status"] not in ("ok", "partial", "failed"):
                msg = f"{where}: status {data['status']!r} is not ok, partial or failed"
                raise MFuserError(msg)
            cameras = {}
            for name, c in data["cameras"].items():
                counts = np.asarray(c["counts"], dtype=np.int64)
                k = len(data["class_names"])
                if counts.shape != (k, k + 1) or (counts < 0).any():
                    msg = f"{where}: camera {name!r} counts have shape {counts.shape}, expected {(k, k + 1)}"
                    raise MFuserError(msg)
                cameras[name] = CameraRecord(int(c["frames"]), int(c["evaluated"]), counts,
                                             LatencySketch.from_dict(c["latency_sketch"]))
            frames = [FrameRecord(f["camera"], int(f["index"]), int(f["stamp_ns"]), float(f["latency_ms"]),
                                  int(f["pixels"]), _nan(f["miou"]), _nan(f["accuracy"]))
                      for f in data["worst_frames"]]
            return cls(bag=str(data["bag"]), bag_id=str(data["bag_id"]), status=data["status"],
                       reason=data["reason"], attempts=int(data["attempts"]), fingerprint=str(data["fingerprint"]),
                       class_names=list(data["class_names"]), cameras=cameras, worst_frames=frames,
                       frames_read=int(data["frames"]["read"]), frames_dropped=int(data["frames"]["dropped"]),
                       frames_failed=int(data["frames"]["failed"]), wall_s=float(data["wall_s"]),
                       model_s=float(data["model_s"]), report=str(data["report"]), worker=dict(data["worker"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            msg = f"{where}: malformed bag record ({err!r})"
            raise MFuserError(msg) from err


def _frame_dict(r: FrameRecord) -> dict[str, Any]:
    return {"camera": r.camera, "index": r.index, "stamp_ns": r.stamp_ns, "latency_ms": r.latency_ms,
            "pixels": r.pixels, "miou": None if math.isnan(r.miou) else r.miou,
            "accuracy": None if math.isnan(r.accuracy) else r.accuracy}


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def bag_record_from_result(result: ReplayResult, bag: str, bag_id: str, report: str, fingerprint: str,
                           worst: int, attempts: int = 1, worker: dict[str, Any] | None = None) -> BagRecord:
    """The record of one finished single-bag replay: the one place a fleet job reads a per-bag result.

    The confusion matrices come from the replay's evaluator and the latencies from its frame log (both in-process:
    ``metrics.json`` holds only their summaries).
    """
    if result.evaluator is None or result.frame_log is None:
        msg = f"{bag}: the replay result carries no evaluator / frame log (made by another version?)"
        raise MFuserError(msg)
    summary = result.summary
    sketches = result.frame_log.latency_sketches()
    names = list(result.evaluator.class_names)
    cameras = {}
    for ns, cam in summary["cameras"].items():
        cameras[ns] = CameraRecord(frames=int(cam["frames_out"]), evaluated=int(cam["evaluated"]),
                                   counts=result.evaluator.matrices[ns].counts_array(),
                                   latency=sketches.get(ns, LatencySketch()))
    status: BagStatus = "ok" if result.exit_code == EXIT_OK and not summary["partial"] else "partial"
    reason = None if status == "ok" else (summary.get("partial_reason") or f"replay exit code {result.exit_code}")
    if result.exit_code == EXIT_INTERRUPTED:
        msg = f"{bag}: the replay was interrupted; no complete result"
        raise MFuserError(msg)
    frames = summary["frames"]
    return BagRecord(bag=bag, bag_id=bag_id, status=status, reason=reason, attempts=attempts, fingerprint=fingerprint,
                     class_names=names, cameras=cameras, worst_frames=result.frame_log.worst(worst),
                     frames_read=int(frames["read"]), frames_dropped=int(frames["dropped"]),
                     frames_failed=int(frames["failed"]), wall_s=float(summary["wall_s"]),
                     model_s=float(summary["model_s"]), report=report, worker=dict(worker or {}))


def failed_record(bag: str, bag_id: str, reason: str, attempts: int, worker: dict[str, Any] | None = None) -> BagRecord:
    """A bag that has no result, and why."""
    return BagRecord(bag=bag, bag_id=bag_id, status="failed", reason=reason, attempts=attempts,
                     worker=dict(worker or {}))


def write_bag_record(path: Path, record: BagRecord) -> Path:
    """Write ``fleet_result.json`` atomically (a crash never leaves a half record that resume would trust)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record.to_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


def read_bag_record(path: Path) -> BagRecord:
    """The record in ``path``.

    Raises:
        MFuserError: unreadable or malformed (names the file).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        msg = f"{path}: cannot read the bag record: {err}"
        raise MFuserError(msg) from err
    return BagRecord.from_dict(data, str(path))


# -- merge ----------------------------------------------------------------------------------------------------------
def _metrics(cm: ConfusionMatrix | None, names: Sequence[str], rule: MiouRule) -> dict[str, Any] | None:
    if cm is None or cm.counts_array().sum() == 0:
        return None
    return cm.to_dict(names, rule)


def merge_records(records: Sequence[BagRecord], worst: int = 10, rule: MiouRule = "mmseg") -> dict[str, Any]:
    """The fleet summary: overall, per camera and per bag; the worst bags and frames; the failed bags.

    mIoUs follow ``rule`` (:data:`mfuser_model.metrics.MIOU_RULES`).

    Raises:
        MFuserError: the bags were scored with different class lists.
    """
    done = [r for r in records if r.status != "failed"]
    names = done[0].class_names if done else []
    for r in done:
        if r.class_names != names:
            msg = f"{r.bag}: scored with classes {r.class_names[:3]}..., the others with {names[:3]}...; cannot merge"
            raise MFuserError(msg)
    overall_cm = ConfusionMatrix(len(names)) if names else None
    overall_lat = LatencySketch()
    per_camera: dict[str, dict[str, Any]] = {}
    bags = []
    for r in done:
        bag_lat = LatencySketch()
        for ns, cam in r.cameras.items():
            entry = per_camera.setdefault(ns, {"bags": 0, "frames": 0, "evaluated": 0,
                                               "cm": ConfusionMatrix(len(names)), "lat": LatencySketch()})
            entry["bags"] += 1
            entry["frames"] += cam.frames
            entry["evaluated"] += cam.evaluated
            entry["cm"].merge(cam.matrix())
            entry["lat"].merge(cam.latency)
            bag_lat.merge(cam.latency)
        overall_lat.merge(bag_lat)
        bag_cm = r.matrix()
        if overall_cm is not None and bag_cm is not None:
            overall_cm.merge(bag_cm)
        bags.append({"bag": r.bag, "bag_id": r.bag_id, "status": r.status, "reason": r.reason,
                     "resumed": r.resumed, "attempts": r.attempts, "report": r.report,
                     "frames": sum(c.frames for c in r.cameras.values()),
                     "evaluated": sum(c.evaluated for c in r.cameras.values()),
                     "metrics": _metrics(bag_cm, names, rule), "latency_ms": bag_lat.summary(),
                     "wall_s": r.wall_s, "model_s": r.model_s, "worker": r.worker})
    cameras = {ns: {"bags": e["bags"], "frames": e["frames"], "evaluated": e["evaluated"],
                    "metrics": _metrics(e["cm"], names, rule), "latency_ms": e["lat"].summary(),
                    "latency_sketch": e["lat"].to_dict()} for ns, e in sorted(per_camera.items())}
    scored = [b for b in bags if b["metrics"] and b["metrics"]["mIoU"] is not None]
    scored.sort(key=lambda b: (b["metrics"]["mIoU"], b["bag_id"]))
    frames = [(r, f) for r in done for f in r.worst_frames]
    order = {id(f): r for r, f in frames}
    worst_list = worst_frames([f for _, f in frames], worst)
    return {
        "class_names": list(names),
        "miou_rule": rule,
        "bags_total": len(records),
        "bags_ok": sum(r.status == "ok" for r in records),
        "bags_partial": sum(r.status == "partial" for r in records),
        "bags_failed": sum(r.status == "failed" for r in records),
        "bags_resumed": sum(r.resumed for r in records),
        "overall": {"frames": sum(b["frames"] for b in bags), "evaluated": sum(b["evaluated"] for b in bags),
                    "metrics": _metrics(overall_cm, names, rule), "latency_ms": overall_lat.summary(),
                    "latency_sketch": overall_lat.to_dict(),
                    "latency_relative_accuracy": overall_lat.relative_accuracy},
        "cameras": cameras,
        "bags": bags,
        "worst_bags": [{"bag_id": b["bag_id"], "bag": b["bag"], "mIoU": b["metrics"]["mIoU"], "report": b["report"]}
                       for b in scored[:worst]],
        "worst_frames": [{"bag_id": order[id(f)].bag_id, "bag": order[id(f)].bag, "report": order[id(f)].report,
                          **_frame_dict(f)} for f in worst_list],
        "failed": [{"bag": r.bag, "bag_id": r.bag_id, "reason": r.reason, "attempts": r.attempts,
                    "worker": r.worker} for r in records if r.status == "failed"],
    }


def write_fleet_report(out_dir: Path, merged: dict[str, Any], job: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``fleet_metrics.json`` (the merged summary plus ``job``) and ``fleet_report.md``; returns their paths."""
    json_path, md_path = out_dir / "fleet_metrics.json", out_dir / "fleet_report.md"
    with atomic_path(json_path) as tmp:
        Path(tmp).write_text(json.dumps({"job": job, **merged}, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text("\n".join(_markdown(merged, job)) + "\n", encoding="utf-8")
    return json_path, md_path


def _markdown(merged: dict[str, Any], job: dict[str, Any]) -> list[str]:
    lines = ["# MFuser fleet replay report", ""]
    if job["interrupted"]:
        lines += [f"> **PARTIAL** — {job['interrupted']}", ""]
    o = merged["overall"]
    lines += [
        f"- bags: {merged['bags_total']} ({merged['bags_ok']} ok, {merged['bags_partial']} partial, "
        f"{merged['bags_failed']} failed, {merged['bags_resumed']} taken from an earlier run)",
        f"- model: `{job['model']}` (tensors sha256 `{job.get('model_tensors_sha256') or 'none recorded'}`); "
        f"decoder backend {job.get('decoder_backend', 'torch')}; settings fingerprint `{job['fingerprint']}`",
        f"- mIoU rule: {MIOU_RULES[merged.get('miou_rule', 'mmseg')]}",
        f"- ran on: {job['cluster']}, {job['workers']} workers, "
        f"{job['cpus_per_bag']} CPU / {job['gpus_per_bag']} GPU per bag, "
        f"retries {job['retries']}",
        f"- job wall time {job['wall_s']:.1f} s for {job['bags_run']} bags run "
        f"({job['bags_per_minute']:.2f} bags/min); summed per-bag model time {job['sum_model_s']:.1f} s, "
        f"replay time {job['sum_bag_wall_s']:.1f} s",
        "- mIoU: from the confusion matrix summed over every frame of every bag (never a mean of bag mIoUs); "
        f"latency percentiles: from mergeable histograms (within {100 * o['latency_relative_accuracy']:.1f} % "
        "of the exact value), never a mean of bag percentiles",
        "",
        "## Overall", "",
        "| | frames | evaluated | mIoU | mAcc | aAcc | latency p50 | p95 | p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| **all** | {o['frames']} | {o['evaluated']} | " + metric_cells(o["metrics"], o["latency_ms"]) + " |", "",
        "## Per camera (summed over bags)", "",
        "| camera | bags | frames | evaluated | mIoU | mAcc | aAcc | latency p50 | p95 | p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ns, c in merged["cameras"].items():
        lines.append(f"| {ns or '/'} | {c['bags']} | {c['frames']} | {c['evaluated']} | "
                     + metric_cells(c["metrics"], c["latency_ms"]) + " |")
    lines += ["", "## Per bag", "",
              "| bag | status | frames | evaluated | mIoU | mAcc | aAcc | latency p50 | p95 | p99 (ms) | wall s "
              "| report |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in merged["bags"]:
        status = b["status"] + (" (earlier run)" if b["resumed"] else "") + (f": {b['reason']}" if b["reason"] else "")
        lines.append(f"| `{b['bag_id']}` | {status} | {b['frames']} | {b['evaluated']} | "
                     + metric_cells(b["metrics"], b["latency_ms"])
                     + f" | {b['wall_s']:.1f} | [report]({b['report']}) |")
    if merged["failed"]:
        lines += ["", "## Failed bags", "", "| bag | attempts | why |", "|---|---|---|"]
        for f in merged["failed"]:
            reason = (f["reason"] or "").replace("\n", " ").replace("|", "\\|")
            lines.append(f"| `{f['bag']}` | {f['attempts']} | {reason} |")
    lines += ["", "## Worst bags (lowest mIoU)", ""]
    lines += [f"{i}. `{b['bag_id']}` mIoU {percent(b['mIoU'])} — [report]({b['report']})"
              for i, b in enumerate(merged["worst_bags"], 1)] or ["No bag had ground truth."]
    lines += ["", "## Worst frames (lowest frame mIoU)", ""]
    if merged["worst_frames"]:
        lines += ["| bag | camera | frame | stamp (s) | mIoU | aAcc | report |", "|---|---|---|---|---|---|---|"]
        lines += [f"| `{f['bag_id']}` | {f['camera'] or '/'} | {f['index']} | {f['stamp_ns'] / 1e9:.3f} | "
                  f"{percent(f['miou'])} | {percent(f['accuracy'])} | [report]({f['report']}) |"
                  for f in merged["worst_frames"]]
    else:
        lines.append("No frame had ground truth.")
    metrics = merged["overall"]["metrics"]
    if metrics:
        cm = ConfusionMatrix(len(merged["class_names"]))
        cm.add_counts(np.asarray(metrics["confusion_matrix"], dtype=np.int64))
        lines += ["", "## Per-class IoU and accuracy, all bags and cameras", "",
                  class_table(cm, merged["class_names"], merged.get("miou_rule", "mmseg"))]
    return lines
