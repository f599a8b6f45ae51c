"""Semantic-segmentation metrics: one confusion matrix shared by training's evaluator and the replay tool.

Intersections and unions are accumulated over the whole set, pixels whose ground truth is ``ignore_index`` are
dropped, and predictions outside ``[0, K)`` on valid pixels count as misses for the ground-truth class (mmseg drops
them from the prediction histogram but keeps them in the label histogram, so they enlarge the union; BDD100K's
toolkit maps them to its "ignored" column, the same). Per-class IoUs agree between the tools; which classes the mean
runs over does not (:data:`MIOU_RULES`):

- ``mmseg`` (default; mmsegmentation's ``mean_iou``, the metric the MFuser paper reports, and cityscapesscripts'):
  a class absent from both ground truth and prediction has IoU NaN and is left out; one that is predicted but
  absent from the ground truth counts 0.
- ``bdd100k`` (the BDD100K toolkit, ``bdd100k/eval/seg.py``): the mean runs over the classes present in the
  ground truth only; every other class is listed with IoU 0 and left out of the mean. Use it to put a number next
  to one the toolkit printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from mfuser_model.classes import CITYSCAPES_CLASSES, IGNORE_INDEX

__all__ = ["MIOU_RULES", "ConfusionMatrix", "MiouRule", "check_rule"]

MiouRule = Literal["mmseg", "bdd100k"]
# What each rule averages over, in the words a report prints beside the number.
MIOU_RULES: dict[str, str] = {
    "mmseg": ("mmseg rule: mean over the classes present in the ground truth or the prediction (a class predicted "
              "but absent from the ground truth counts 0; a class absent from both is left out)"),
    "bdd100k": ("BDD100K toolkit rule (bdd100k/eval/seg.py): mean over the classes present in the ground truth "
                "only (the others are listed as 0 and left out of the mean)"),
}


def check_rule(rule: str) -> MiouRule:
    """``rule`` if it names a rule of :data:`MIOU_RULES`.

    Raises:
        ValueError: an unknown rule (the valid ones are named).
    """
    if rule not in MIOU_RULES:
        msg = f"mIoU rule {rule!r} is not one of {sorted(MIOU_RULES)}"
        raise ValueError(msg)
    return rule  # type: ignore[return-value]


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array or (CPU/GPU) torch tensor, without importing torch here."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch.Tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


class ConfusionMatrix:
    """Pixel confusion matrix ``(K, K)``: rows = ground truth, columns = prediction, int64 counts.

    Args:
        num_classes: number of classes K (19 for Cityscapes train ids).
        ignore_index: ground-truth value to skip.
    """

    def __init__(self, num_classes: int = 19, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            msg = f"num_classes must be >= 1, got {num_classes}"
            raise ValueError(msg)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # Column K collects predictions outside [0, K) on valid pixels (misses with no predicted class).
        self._counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """``(K, K)`` int64 counts, ``matrix[gt, pred]``."""
        return self._counts[:, : self.num_classes].copy()

    def reset(self) -> None:
        """Zero all counts."""
        self._counts[:] = 0

    def update(self, pred: Any, gt: Any) -> None:
        """Add one prediction / ground-truth pair (numpy or torch, any equal shapes, integer class ids).

        Raises:
            ValueError: shapes differ, or the ground truth holds a value outside ``[0, K)`` that is not ignore.
        """
        p = _to_numpy(pred).reshape(-1)
        g = _to_numpy(gt).reshape(-1)
        if p.shape != g.shape:
            msg = f"prediction shape {_to_numpy(pred).shape} and ground truth shape {_to_numpy(gt).shape} differ"
            raise ValueError(msg)
        g = g.astype(np.int64, copy=False)
        p = p.astype(np.int64, copy=False)
        valid = g != self.ignore_index
        g = g[valid]
        p = p[valid]
        k = self.num_classes
        if g.size and (g.min() < 0 or g.max() >= k):
            bad = g[(g < 0) | (g >= k)]
            msg = f"ground truth holds ids {np.unique(bad)[:10].tolist()} outside [0, {k}) and != {self.ignore_index}"
            raise ValueError(msg)
        p = np.where((p < 0) | (p >= k), k, p)
        self._counts += np.bincount(g * (k + 1) + p, minlength=k * (k + 1)).reshape(k, k + 1)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. DDP ranks, per-camera into overall); returns self."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            msg = (
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore {self.ignore_index})"
            )
            raise ValueError(msg)
        self._counts += other._counts
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        out._counts = self._counts.copy()
        return out.merge(other)

    def counts_array(self) -> np.ndarray:
        """Raw ``(K, K+1)`` counts (last column = invalid predictions), e.g. to all-reduce across ranks."""
        return self._counts.copy()

    def add_counts(self, counts: Any) -> None:
        """Add a raw ``(K, K+1)`` counts array (the inverse of :meth:`counts_array`)."""
        arr = _to_numpy(counts).astype(np.int64)
        if arr.shape != self._counts.shape:
            msg = f"counts array has shape {arr.shape}, expected {self._counts.shape}"
            raise ValueError(msg)
        self._counts += arr

    def intersection_union(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class intersection and union pixel counts, int64 ``(K,)`` each."""
        tp = np.diag(self._counts[:, : self.num_classes])
        gt_area = self._counts.sum(axis=1)
        pred_area = self._counts[:, : self.num_classes].sum(axis=0)
        return tp, gt_area + pred_area - tp

    def gt_present(self) -> np.ndarray:
        """``(K,)`` bool: the classes with at least one valid ground-truth pixel."""
        return self._counts.sum(axis=1) > 0

    def iou(self, rule: MiouRule = "mmseg") -> np.ndarray:
        """Per-class IoU, float64 ``(K,)``. Where a class is absent from both ground truth and prediction: NaN
        (``mmseg``) or 0 (``bdd100k``, as its toolkit lists them)."""
        inter, union = self.intersection_union()
        absent = 0.0 if check_rule(rule) == "bdd100k" else np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.maximum(union, 1), absent)

    def miou(self, rule: MiouRule = "mmseg") -> float:
        """Mean IoU by ``rule`` (see :data:`MIOU_RULES`); NaN when nothing was counted."""
        iou = self.iou(rule)
        keep = self.gt_present() if rule == "bdd100k" else np.isfinite(iou)
        return float(iou[keep].mean()) if keep.any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct / valid pixels (NaN when nothing was counted)."""
        total = self._counts.sum()
        return float(np.trace(self._counts[:, : self.num_classes]) / total) if total else float("nan")

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall (mmseg "Acc"), NaN for classes absent from the ground truth."""
        gt_area = self._counts.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(gt_area > 0, np.diag(self._counts) / np.maximum(gt_area, 1), np.nan)

    def mean_class_accuracy(self) -> float:
        """Mean of :meth:`class_accuracy` over the classes in the ground truth (mmseg "mAcc"; NaN if none)."""
        acc = self.class_accuracy()
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")

    def to_dict(self, class_names: Sequence[str] = CITYSCAPES_CLASSES, rule: MiouRule = "mmseg") -> dict[str, Any]:
        """JSON-friendly summary (fractions in [0, 1], NaN -> None): ``mIoU`` by ``rule`` with the rule's name and
        words, the mIoU by every rule, ``mAcc`` (mean class accuracy), ``aAcc`` (overall pixel accuracy),
        per-class ``IoU`` and ``Acc``, the ``pixels`` counted and the ``confusion_matrix`` (rows = ground truth,
        columns = prediction, a last column of predictions outside the classes)."""
        if len(class_names) != self.num_classes:
            msg = f"{len(class_names)} class names given for a {self.num_classes}-class matrix"
            raise ValueError(msg)

        def clean(v: float) -> float | None:
            return None if np.isnan(v) else float(v)

        return {
            "mIoU": clean(self.miou(rule)),
            "miou_rule": check_rule(rule),
            "miou_rule_text": MIOU_RULES[rule],
            "mIoU_by_rule": {r: clean(self.miou(r)) for r in MIOU_RULES},  # type: ignore[arg-type]
            "mAcc": clean(self.mean_class_accuracy()),
            "aAcc": clean(self.pixel_accuracy()),
            "IoU": {name: clean(v) for name, v in zip(class_names, self.iou(rule), strict=True)},
            "Acc": {name: clean(v) for name, v in zip(class_names, self.class_accuracy(), strict=True)},
            "pixels": int(self._counts.sum()),
            "confusion_matrix": self._counts.tolist(),
        }

    def __repr__(self) -> str:
        pixels = int(self._counts.sum())
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={pixels}, mIoU={self.miou():.4f})"

