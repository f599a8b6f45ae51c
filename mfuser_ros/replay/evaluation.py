"""Replay evaluation: ground truth (bag topics or PNG folders), confusion matrices, latency, montage, report.

Metrics come from :class:`mfuser_model.metrics.ConfusionMatrix`, the code training's evaluator uses, so a replay
mIoU and a training-time mIoU on the same frames are the same number.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from mfuser_model.classes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    colorize,
)
from mfuser_model.errors import MFuserError
from mfuser_model.metrics import ConfusionMatrix
from mfuser_model.report import class_table, legend_image, percent, run_facts
from mfuser_ros.replay.options import GtFormat

__all__ = [
    "CITYSCAPES_LABEL_TO_TRAIN",
    "Evaluator",
    "GroundTruthDir",
    "GtFormat",
    "Montage",
    "StampMatcher",
    "gt_lut",
    "label_message_to_array",
    "latency_summary",
    "metric_cells",
    "to_train_ids",
    "write_report",
]



def gt_lut(fmt: GtFormat, num_classes: int = len(CITYSCAPES_CLASSES)) -> np.ndarray:
    """(256,) uint8 lookup from stored ground-truth values to train ids (255 = ignore)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    if fmt == "labelids":
        for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
            lut[label_id] = train_id
    elif fmt == "trainids":
        lut[:num_classes] = np.arange(num_classes, dtype=np.uint8)
    else:
        msg = f"--gt-format: {fmt!r} is not 'labelids' or 'trainids'"
        raise MFuserError(msg)
    return lut


def to_train_ids(values: np.ndarray, fmt: GtFormat, lut: np.ndarray, where: str) -> np.ndarray:
    """Stored ground-truth values -> train ids through ``lut`` (from :func:`gt_lut`).

    Raises:
        MFuserError: ``fmt`` is ``trainids`` but values other than 0..K-1 and 255 occur (likely labelIds).
    """
    if fmt == "trainids":
        num_classes = int(np.count_nonzero(lut != IGNORE_INDEX))
        bad = np.unique(values[(values >= num_classes) & (values != IGNORE_INDEX)])
        if bad.size:
            msg = (f"{where}: ground truth holds ids {bad[:8].tolist()} that are not train ids "
                   f"(0..{num_classes - 1}, 255); are they Cityscapes labelIds? use --gt-format labelids")
            raise MFuserError(msg)
    return lut[values]


def _label_files(folder: Path) -> dict[int, Path]:
    """``<number>.png`` files of ``folder`` by their number."""
    return {int(p.stem): p for p in folder.glob("*.png") if p.stem.isdigit()}


def label_message_to_array(msg: Any, where: str) -> np.ndarray:
    """A ground-truth label message (mono8/8UC1 Image, or PNG CompressedImage) -> (H, W) uint8 values."""
    if hasattr(msg, "format"):
        data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
        labels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if labels is None or labels.ndim != 2 or labels.dtype != np.uint8:
            msg_ = f"{where}: compressed ground truth must be a single-channel 8-bit PNG"
            raise MFuserError(msg_)
        return labels
    encoding = str(msg.encoding)
    if encoding not in ("mono8", "8UC1"):
        msg_ = f"{where}: ground-truth image has encoding {encoding!r}; expected mono8 (class ids)"
        raise MFuserError(msg_)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
    if step < width or data.size < step * height:
        msg_ = f"{where}: ground-truth image {width}x{height} step {step} has only {data.size} bytes"
        raise MFuserError(msg_)
    return data[: step * height].reshape(height, step)[:, :width]


class GroundTruthDir:
    """Label PNGs on disk, matched per camera: ``ROOT/<camera>/<key>.png``, or ``ROOT/<key>.png`` when only one
    camera is replayed.

    ``<camera>`` is the camera's output namespace without the leading ``/`` (``/front`` -> ``front``); ``<key>`` is
    the header stamp in nanoseconds (``key="stamp"``) or the frame's index on its topic (``key="index"``, also
    zero-padded, e.g. ``000042.png``). A camera without its folder has no ground truth, unless it is the only
    camera, when PNGs directly in ``ROOT`` are its labels.

    Raises:
        MFuserError: ``root`` is not a folder; PNGs lie directly in ``ROOT`` while several cameras are replayed and
            a camera has no folder of its own (whose labels would they be?); or no camera has any label PNG.
    """

    def __init__(self, root: str | Path, key: Literal["stamp", "index"] = "stamp",
                 cameras: Sequence[str] = ("",)) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            msg = f"--gt-dir: {self.root} is not a directory"
            raise MFuserError(msg)
        self.key = key
        flat = _label_files(self.root)
        self.folders: dict[str, Path | None] = {}
        for camera in cameras:
            folder = self.root / camera.strip("/")
            self.folders[camera] = folder if camera.strip("/") and folder.is_dir() else None
        unmapped = [c for c, f in self.folders.items() if f is None]
        if flat and unmapped:
            if len(self.folders) > 1:
                msg = (f"--gt-dir {self.root}: holds {len(flat)} label PNGs directly, but {len(self.folders)} "
                       f"cameras are replayed ({', '.join(c or '/' for c in self.folders)}) and "
                       f"{', '.join(c or '/' for c in unmapped)} "
                       f"{'has no folder of its' if len(unmapped) == 1 else 'have no folder of their'} own: "
                       "every camera would be scored against the same labels. Put each "
                       f"camera's labels in {self.root}/<camera>/ ("
                       f"{', '.join(c.strip('/') + '/' for c in self.folders if c.strip('/'))}), or replay one "
                       "camera (--topics)")
                raise MFuserError(msg)
            self.folders[unmapped[0]] = self.root
        self._index = {c: (flat if f == self.root else _label_files(f)) if f is not None else {}
                       for c, f in self.folders.items()}
        if not any(self._index.values()):
            wanted = ", ".join(f"{self.root / c.strip('/')}/" for c in self.folders if c.strip("/"))
            msg = (f"--gt-dir {self.root}: no label PNG (<{key}>.png) for any camera; looked in "
                   f"{wanted or self.root}")
            raise MFuserError(msg)

    def describe(self) -> dict[str, str | None]:
        """camera -> the folder its labels come from (None: it has none)."""
        return {c: (str(f) if f is not None else None) for c, f in self.folders.items()}

    def find(self, camera: str, stamp_ns: int, index: int) -> Path | None:
        """The label file of a frame, or None."""
        return self._index.get(camera, {}).get(stamp_ns if self.key == "stamp" else index)

    @staticmethod
    def read(path: Path) -> np.ndarray:
        """(H, W) uint8 values of a label PNG."""
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if labels is None:
            msg = f"{path}: unreadable label image"
            raise MFuserError(msg)
        if labels.ndim == 3:  # an 8-bit PNG saved as RGB with equal channels
            labels = labels[..., 0]
        if labels.dtype != np.uint8:
            msg = f"{path}: label image must be 8-bit, got {labels.dtype}"
            raise MFuserError(msg)
        return labels


class StampMatcher:
    """Pairs predictions and ground-truth label messages of one camera by header stamp, in either order.

    Unpaired entries wait in bounded queues (oldest evicted first); evictions and leftovers count as unmatched.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.preds: OrderedDict[int, Any] = OrderedDict()
        self.gts: OrderedDict[int, np.ndarray] = OrderedDict()
        self.evicted_preds = 0
        self.evicted_gts = 0

    def add_pred(self, stamp: int, pred: Any) -> np.ndarray | None:
        """Store a prediction; returns the waiting ground truth of the same stamp (then both are removed)."""
        gt = self.gts.pop(stamp, None)
        if gt is not None:
            return gt
        self.preds[stamp] = pred
        if len(self.preds) > self.capacity:
            self.preds.popitem(last=False)
            self.evicted_preds += 1
        return None

    def add_gt(self, stamp: int, gt: np.ndarray) -> Any | None:
        """Store ground truth; returns the waiting prediction of the same stamp (then both are removed)."""
        pred = self.preds.pop(stamp, None)
        if pred is not None:
            return pred
        self.gts[stamp] = gt
        if len(self.gts) > self.capacity:
            self.gts.popitem(last=False)
            self.evicted_gts += 1
        return None

    @property
    def unmatched_preds(self) -> int:
        """Predictions that never met their ground truth."""
        return self.evicted_preds + len(self.preds)

    @property
    def unmatched_gts(self) -> int:
        """Ground-truth messages that never met a prediction (e.g. frames dropped in real-time mode)."""
        return self.evicted_gts + len(self.gts)


@dataclass
class Evaluator:
    """Per-camera confusion matrices over train ids; predictions are resized (nearest) to the ground truth."""

    cameras: Sequence[str]
    class_names: Sequence[str] = CITYSCAPES_CLASSES
    matrices: dict[str, ConfusionMatrix] = field(init=False)
    frames: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.matrices = {c: ConfusionMatrix(len(self.class_names)) for c in self.cameras}
        self.frames = dict.fromkeys(self.cameras, 0)

    def add(self, camera: str, pred: np.ndarray, gt_train: np.ndarray) -> ConfusionMatrix:
        """Count one frame: ``pred`` (h, w) uint8 class ids, ``gt_train`` (H, W) uint8 train ids.

        Returns the frame's own matrix (per-frame scores: the worst frames of a drive).
        """
        if pred.shape != gt_train.shape:
            pred = cv2.resize(pred, (gt_train.shape[1], gt_train.shape[0]), interpolation=cv2.INTER_NEAREST)
        frame = ConfusionMatrix(len(self.class_names))
        frame.update(pred, gt_train)
        self.matrices[camera].merge(frame)
        self.frames[camera] += 1
        return frame

    def overall(self) -> ConfusionMatrix:
        """All cameras together."""
        total = ConfusionMatrix(len(self.class_names))
        for cm in self.matrices.values():
            total.merge(cm)
        return total


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 / mean / max in ms (None when empty)."""
    if not values_ms:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(values_ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max())}


@dataclass
class _Row:
    camera: str
    stamp: int
    rgb: np.ndarray
    pred: np.ndarray
    gt: np.ndarray | None = None


class Montage:
    """Sampled frames drawn as rows: input | prediction | ground truth | errors (red = wrong, black = ignored),
    with a colour legend (class id, name, colour) at the bottom.

    Args:
        every: keep every ``every``-th frame of each camera, up to ``max_rows`` rows in all.
        tile_width: width of each tile in pixels.
        palette / class_names: the colours the node draws with (its ``color_palette`` parameter, else the
            model's palette) and the model's class names.
    """

    def __init__(self, every: int, max_rows: int = 8, tile_width: int = 256,
                 palette: tuple[tuple[int, int, int], ...] = CITYSCAPES_PALETTE,
                 class_names: Sequence[str] = CITYSCAPES_CLASSES) -> None:
        self.every = max(1, every)
        self.max_rows = max_rows
        self.tile_width = tile_width
        self.palette = palette
        self.class_names = tuple(class_names)
        self.rows: list[_Row] = []
        self._by_key: dict[tuple[str, int], _Row] = {}

    def wants(self, index: int) -> bool:
        """Whether frame ``index`` of a camera should be sampled."""
        return len(self.rows) < self.max_rows and index % self.every == 0

    def add(self, camera: str, stamp: int, rgb: np.ndarray, pred: np.ndarray) -> None:
        """Sample a frame (its ground truth may arrive later through :meth:`set_gt`)."""
        row = _Row(camera, stamp, rgb, pred)
        self.rows.append(row)
        self._by_key[(camera, stamp)] = row

    def set_gt(self, camera: str, stamp: int, gt_train: np.ndarray) -> None:
        """Attach ground truth to a sampled frame, if it was sampled."""
        row = self._by_key.get((camera, stamp))
        if row is not None:
            row.gt = gt_train

    def _fit(self, image: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
        return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)

    def render(self) -> np.ndarray | None:
        """The montage as (H, W, 3) uint8 RGB, or None without samples."""
        if not self.rows:
            return None
        tiles_rows = []
        for row in self.rows:
            h, w = row.pred.shape
            size = (self.tile_width, max(1, round(h * self.tile_width / w)))
            rgb = self._fit(row.rgb, size, nearest=False)
            pred = self._fit(colorize(row.pred, self.palette), size, nearest=True)
            if row.gt is not None:
                gt_small = self._fit(row.gt, size, nearest=True)
                gt = colorize(gt_small, self.palette)
                pred_small = self._fit(row.pred, size, nearest=True)
                err = (rgb // 3).astype(np.uint8)
                wrong = (pred_small != gt_small) & (gt_small != IGNORE_INDEX)
                err[wrong] = (255, 0, 0)
                err[gt_small == IGNORE_INDEX] = 0
            else:
                gt = np.full_like(rgb, 40)
                err = np.full_like(rgb, 40)
                cv2.putText(gt, "no ground truth", (4, size[1] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                            (200, 200, 200), 1, cv2.LINE_AA)
            line = np.concatenate([rgb, pred, gt, err], axis=1)
            caption = f"{row.camera or '/'}  stamp {row.stamp / 1e9:.3f}s"
            cv2.putText(line, caption, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
            tiles_rows.append(line)
        width = max(r.shape[1] for r in tiles_rows)
        header = np.zeros((20, width, 3), dtype=np.uint8)
        for i, title in enumerate(("input", "prediction", "ground truth", "errors (red)")):
            cv2.putText(header, title, (i * self.tile_width + 4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 255), 1, cv2.LINE_AA)
        padded = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in tiles_rows]
        legend = legend_image(self.class_names, self.palette, width)[:, :width]
        legend = np.pad(legend, ((0, 0), (0, width - legend.shape[1]), (0, 0)))
        return np.concatenate([header, *padded, legend], axis=0)

    def save(self, path: Path) -> bool:
        """Write the montage PNG; False when there is nothing to draw."""
        image = self.render()
        if image is None:
            return False
        if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            msg = f"{path}: cannot write the montage PNG"
            raise MFuserError(msg)
        return True


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def metric_cells(m: dict[str, Any] | None, lat: dict[str, Any]) -> str:
    """The ``mIoU | mAcc | aAcc | p50 | p95 | p99`` cells of a report row (the fleet report's too)."""
    return " | ".join([*(percent(m[k] if m else None) for k in ("mIoU", "mAcc", "aAcc")),
                       _ms(lat["p50"]), _ms(lat["p95"]), _ms(lat["p99"])])


def write_report(out_dir: Path, summary: dict[str, Any], evaluator: Evaluator | None,
                 montage_file: str | None) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``report.md`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "metrics.json", out_dir / "report.md"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(json_path)

    lines = ["# MFuser replay report", ""]
    if summary["partial"]:
        lines += [f"> **PARTIAL** — {summary['partial_reason']}", ">",
                  f"> The numbers below cover the {summary['frames']['processed']} frames processed before that.",
                  ""]
    model = summary["model"]
    rule = summary.get("miou_rule", "mmseg")
    note = f"preset `{model['preset']}` with random weights (no model file)"
    facts = run_facts(model={"file": model["checkpoint"], "tensors_sha256": model.get("tensors_sha256"), "note": note},
                      backend=model.get("decoder_backend", "torch"),
                      inference=(model.get("inference") or {}).get("summary"),
                      ground_truth=f"{summary['gt']['summary']}" if "summary" in summary["gt"] else None, rule=rule)
    lines += [
        f"- input bag: `{summary['bag']}`",
        f"- output bag: `{summary['output_bag']}` ({summary['storage']})",
        *facts,
        f"- device: {model['device']}; mode: {summary['mode']}",
        f"- frames: {summary['frames']['read']} read, {summary['frames']['processed']} segmented, "
        f"{summary['frames']['dropped']} dropped, {summary['frames']['failed']} failed, "
        f"{summary['frames']['evaluated']} with ground truth",
        f"- throughput: {summary['throughput_fps']:.2f} frames/s over {summary['wall_s']:.1f} s",
        "",
        "## Per camera",
        "",
        "| camera | topic | frames | evaluated | mIoU | mAcc | aAcc | latency p50 | p95 | p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cam in summary["cameras"].items():
        lines.append(f"| {name or '/'} | `{cam['topic']}` | {cam['frames_out']} | {cam['evaluated']} | "
                     + metric_cells(cam["metrics"], cam["latency_ms"]) + " |")
    lines.append(f"| **all** | | {summary['frames']['processed']} | {summary['frames']['evaluated']} | "
                 + metric_cells(summary["overall"]["metrics"], summary["overall"]["latency_ms"]) + " |")
    lines += ["", f"Latency: {summary['latency_definition']}", ""]
    if evaluator is not None and summary["frames"]["evaluated"]:
        lines += ["## Per-class IoU and accuracy, all cameras", "", class_table(evaluator.overall(),
                                                                                 evaluator.class_names, rule), ""]
        for name, cm in evaluator.matrices.items():
            if evaluator.frames[name]:
                lines += [f"## Per-class IoU and accuracy, camera `{name or '/'}`", "",
                          class_table(cm, evaluator.class_names, rule), ""]
    else:
        lines += ["No ground truth was matched, so there are no accuracy metrics.", ""]
    if montage_file:
        lines += ["## Sampled frames", "", f"![montage]({montage_file})", ""]
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return json_path, md_path
