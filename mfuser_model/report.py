"""Report formatting shared by ``mfuser-eval`` (training) and ``mfuser-replay`` and its fleet (mfuser_ros).

One place decides how a number is printed (percent, with the sign), what the "mean" row of a class table means,
which facts a report states for its numbers to be comparable (model file and digest, decoder backend, inference
protocol, ground truth and the mIoU rule), and how a colour legend is drawn; training and mfuser_ros both import
it, so the two tools' reports cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mfuser_model.metrics import MIOU_RULES, ConfusionMatrix, MiouRule

__all__ = ["class_table", "decoder_backend_name", "legend_image", "model_file_record", "percent", "run_facts"]


def percent(v: float | None) -> str:
    """A fraction in [0, 1] as ``"81.93%"``; ``"n/a"`` for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.2f}%"


def class_table(cm: ConfusionMatrix, class_names: Sequence[str], rule: MiouRule = "mmseg") -> str:
    """Markdown table of per-class IoU and accuracy, a mean row (mIoU by ``rule``, mean class accuracy) and an
    all-pixels row (overall pixel accuracy), with a note saying which is which."""
    if len(class_names) != cm.num_classes:
        msg = f"{len(class_names)} class names given for a {cm.num_classes}-class matrix"
        raise ValueError(msg)
    width = max(len("**all pixels** (aAcc)"), *(len(n) for n in class_names))
    lines = [f"| {'class':<{width}} | IoU     | Acc     |", f"|{'-' * (width + 2)}|---------|---------|"]
    for name, iou, acc in zip(class_names, cm.iou(rule), cm.class_accuracy(), strict=True):
        lines.append(f"| {name:<{width}} | {percent(iou):>7} | {percent(acc):>7} |")
    lines.append(f"| {'**mean** (mIoU, mAcc)':<{width}} | {percent(cm.miou(rule)):>7} | "
                 f"{percent(cm.mean_class_accuracy()):>7} |")
    lines.append(f"| {'**all pixels** (aAcc)':<{width}} | {'':>7} | {percent(cm.pixel_accuracy()):>7} |")
    lines += ["", f"IoU mean: {MIOU_RULES[rule]}. Acc: per-class recall; its mean (mAcc) runs over the classes in "
              "the ground truth. All pixels: overall pixel accuracy (aAcc)."]
    return "\n".join(lines)


def decoder_backend_name(model: Any) -> str:
    """The backend running ``model``'s decode head (``torch`` unless a deploy backend is attached)."""
    return str(getattr(getattr(model, "head", None), "name", "") or "torch")


def model_file_record(path: str | Path | None) -> dict[str, Any]:
    """``{"file", "tensors_sha256"}`` of a whole-model file: the digest its metadata carries (written by
    :func:`mfuser_model.checkpoint.save_model`; None for files older than the digest, or no file)."""
    if not path:
        return {"file": None, "tensors_sha256": None}
    from mfuser_model.checkpoint import DIGEST_KEY, read_model_metadata  # noqa: PLC0415  (safetensors)

    return {"file": str(path), "tensors_sha256": read_model_metadata(path).get(DIGEST_KEY)}


def run_facts(*, model: dict[str, Any], backend: str, inference: str | None, ground_truth: str | None,
              rule: MiouRule) -> list[str]:
    """Markdown bullets a report states above its numbers (``model`` from :func:`model_file_record`; without a
    file, its ``note`` says what ran instead)."""
    if model.get("file"):
        digest = model.get("tensors_sha256") or "none recorded in the file"
        what = f"`{model['file']}` (tensors sha256 `{digest}`)"
    else:
        what = model.get("note") or "no model file"
    return [f"- model: {what}", f"- decoder backend: {backend}",
            f"- inference: {inference or 'not stated by the segmenter'}",
            f"- ground truth: {ground_truth or 'none'}", f"- mIoU rule: {MIOU_RULES[rule]}"]


def legend_image(class_names: Sequence[str], palette: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """(H, ``width``, 3) uint8 RGB strip: a swatch and the name of every class id, in as many columns as fit."""
    import cv2  # noqa: PLC0415  (drawing only; the command lines import this module before they need OpenCV)

    names = list(class_names)
    cell_w, cell_h = 150, 18
    cols = max(1, min(len(names), width // cell_w))
    rows = -(-len(names) // cols)
    image = np.zeros((rows * cell_h + 4, max(width, cell_w), 3), dtype=np.uint8)
    for i, name in enumerate(names):
        x, y = (i % cols) * cell_w + 4, (i // cols) * cell_h + 3
        color = tuple(int(c) for c in palette[i]) if i < len(palette) else (0, 0, 0)
        cv2.rectangle(image, (x, y), (x + 14, y + 12), color, thickness=-1)
        cv2.rectangle(image, (x, y), (x + 14, y + 12), (255, 255, 255), thickness=1)
        cv2.putText(image, f"{i} {name}", (x + 20, y + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return image
