"""Training and evaluation transforms (numpy + cv2), deterministic given a numpy Generator.

MFuser's train pipeline (mmseg 0.16 semantics): random rescale ×[0.5, 2.0] keeping the aspect ratio -> RandomCrop
512² with ``cat_max_ratio=0.75`` -> horizontal flip (p=0.5) -> PhotoMetricDistortion -> CLIP-normalise -> pad to 512²
(image 0, label 255). Evaluation: resize keeping the ratio to fit (2048, 1024) (Cityscapes, Mapillary) or
(1280, 720) (BDD100K); the label stays at its original size because predictions are resized back.

Every transform is ``t(sample, rng) -> sample`` on ``{"image": (H, W, 3) uint8 RGB, "label": (H, W) uint8, ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from mfuser_model.classes import IGNORE_INDEX
from mfuser_model.preprocess import normalize, rescale_size  # rescale_size: shared with the node's resize

__all__ = [
    "EvalTransform",
    "PhotoMetricDistortion",
    "RandomCrop",
    "RandomFlip",
    "RandomRescale",
    "TrainTransform",
    "rescale_size",
]

Sample = dict[str, Any]


def _resize_pair(sample: Sample, size: tuple[int, int]) -> Sample:
    w, h = size
    sample["image"] = cv2.resize(sample["image"], (w, h), interpolation=cv2.INTER_LINEAR)
    sample["label"] = cv2.resize(sample["label"], (w, h), interpolation=cv2.INTER_NEAREST)
    return sample


@dataclass
class RandomRescale:
    """Resize by a random ratio in ``ratio_range`` keeping the aspect ratio.

    ``base_scale=None`` scales the native size (MFuser's source pipeline); a ``(w, h)`` base follows mmseg
    ``Resize(img_scale=base, ratio_range=...)``: the image is fitted into ``base * ratio``.
    """

    ratio_range: tuple[float, float] = (0.5, 2.0)
    base_scale: tuple[int, int] | None = None

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        ratio = float(rng.uniform(*self.ratio_range))
        h, w = sample["label"].shape
        if self.base_scale is None:
            size = (max(1, int(w * ratio + 0.5)), max(1, int(h * ratio + 0.5)))
        else:
            size = rescale_size(w, h, (int(self.base_scale[0] * ratio), int(self.base_scale[1] * ratio)))
        return _resize_pair(sample, size)


@dataclass
class RandomCrop:
    """mmseg RandomCrop: a random ``crop_size`` window (smaller if the image is), redrawn up to 10 times while one
    class covers ``cat_max_ratio`` or more of the crop's non-ignored pixels (or only one class is present)."""

    crop_size: tuple[int, int] = (512, 512)  # (h, w)
    cat_max_ratio: float = 0.75
    ignore_index: int = IGNORE_INDEX
    max_tries: int = 10

    def _bbox(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        ch, cw = self.crop_size
        y = int(rng.integers(0, max(h - ch, 0) + 1))
        x = int(rng.integers(0, max(w - cw, 0) + 1))
        return y, min(y + ch, h), x, min(x + cw, w)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        label = sample["label"]
        h, w = label.shape
        box = self._bbox(h, w, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                crop = label[box[0] : box[1], box[2] : box[3]]
                cnt = np.bincount(crop.reshape(-1), minlength=256)
                cnt[self.ignore_index] = 0
                cnt = cnt[cnt > 0]
                if len(cnt) > 1 and cnt.max() / cnt.sum() < self.cat_max_ratio:
                    break
                box = self._bbox(h, w, rng)
        y0, y1, x0, x1 = box
        sample["image"] = sample["image"][y0:y1, x0:x1]
        sample["label"] = label[y0:y1, x0:x1]
        return sample


@dataclass
class RandomFlip:
    """Horizontal flip with probability ``prob``."""

    prob: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() < self.prob:
            sample["image"] = sample["image"][:, ::-1]
            sample["label"] = sample["label"][:, ::-1]
        return sample


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


@dataclass
class PhotoMetricDistortion:
    """mmseg PhotoMetricDistortion (defaults): brightness, contrast, saturation and hue, each applied with
    probability 0.5; contrast comes either right after brightness or last (drawn per call, as mmseg's ``mode``)."""

    brightness_delta: int = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = np.ascontiguousarray(sample["image"])
        if rng.integers(2):
            img = _convert(img, beta=float(rng.uniform(-self.brightness_delta, self.brightness_delta)))
        mode = int(rng.integers(2))
        if mode == 1 and rng.integers(2):
            img = _convert(img, alpha=float(rng.uniform(*self.contrast_range)))
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=float(rng.uniform(*self.saturation_range)))
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta))
            hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + shift) % 180).astype(np.uint8)  # OpenCV hue is 0..179
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if mode == 0 and rng.integers(2):
            img = _convert(img, alpha=float(rng.uniform(*self.contrast_range)))
        sample["image"] = img
        return sample


def _to_tensors(sample: Sample, pad_to: tuple[int, int] | None) -> Sample:
    """Normalise the image to ``(3, H, W)`` float32 and the label to ``(H, W)`` int64, padding bottom/right."""
    image = normalize(np.ascontiguousarray(sample["image"]))[0]
    label = torch.from_numpy(np.ascontiguousarray(sample["label"]).astype(np.int64))
    if pad_to is not None:
        ph, pw = pad_to[0] - label.shape[0], pad_to[1] - label.shape[1]
        if ph > 0 or pw > 0:
            ph, pw = max(ph, 0), max(pw, 0)
            image = torch.nn.functional.pad(image, (0, pw, 0, ph), value=0.0)  # mmseg pads after Normalize
            label = torch.nn.functional.pad(label, (0, pw, 0, ph), value=IGNORE_INDEX)
    out = dict(sample)
    out["image"], out["label"] = image, label
    return out


class TrainTransform:
    """MFuser's source-domain augmentation, ending in tensors: ``image`` (3, crop, crop) float32 CLIP-normalised,
    ``label`` (crop, crop) int64 with 255 padding.

    Args:
        crop_size: square crop side (512 in MFuser; tests use 64-128) or ``(h, w)``.
        ratio_range: random rescale range.
        base_scale: None = rescale the native size (MFuser); ``(w, h)`` = mmseg ``img_scale``.
        cat_max_ratio: RandomCrop's single-class cap.
        flip_prob: horizontal flip probability.
        photometric: apply PhotoMetricDistortion.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] = 512,
        *,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        base_scale: tuple[int, int] | None = None,
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
    ) -> None:
        size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(int(s) for s in crop_size)
        if len(size) != 2 or min(size) < 1:
            msg = f"crop_size must be a positive int or (h, w), got {crop_size!r}"
            raise ValueError(msg)
        self.crop_size: tuple[int, int] = size  # type: ignore[assignment]
        self.steps: list[Any] = [
            RandomRescale(ratio_range, base_scale),
            RandomCrop(self.crop_size, cat_max_ratio),
            RandomFlip(flip_prob),
        ]
        if photometric:
            self.steps.append(PhotoMetricDistortion())

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        sample = dict(sample)
        for step in self.steps:
            sample = step(sample, rng)
        return _to_tensors(sample, self.crop_size)

    def __repr__(self) -> str:
        return f"TrainTransform(crop_size={self.crop_size}, steps={self.steps})"


class EvalTransform:
    """Test-time transform: resize keeping the ratio to fit ``scale`` and normalise; the label keeps its original
    size (as int64) so the metric is computed at full resolution.

    Args:
        scale: ``(w, h)`` box, (2048, 1024) for Cityscapes/Mapillary, (1280, 720) for BDD100K; None keeps the size.

    Output adds ``"ori_size": (H, W)``.
    """

    def __init__(self, scale: tuple[int, int] | None = (2048, 1024)) -> None:
        self.scale = scale

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        image = sample["image"]
        h, w = image.shape[:2]
        if self.scale is not None:
            nw, nh = rescale_size(w, h, self.scale)
            if (nw, nh) != (w, h):
                image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out = dict(sample)
        out["image"] = normalize(np.ascontiguousarray(image))[0]
        out["label"] = torch.from_numpy(np.ascontiguousarray(sample["label"]).astype(np.int64))
        out["ori_size"] = (h, w)
        return out

    def __repr__(self) -> str:
        return f"EvalTransform(scale={self.scale})"
