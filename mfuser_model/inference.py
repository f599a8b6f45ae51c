"""Inference for everything downstream: numpy RGB in, uint8 labels (and confidence) out.

Two modes, as the reference evaluates:
- ``whole``: the image at its own size (padded to a multiple of the token grid's pooling step), one forward.
- ``slide``: ``crop_size`` windows every ``stride`` pixels (512 / 341 in the paper); per-window class scores
  are averaged where windows overlap. Windows are clipped to the image and decoded at their own size, as mmseg's
  ``slide_inference`` does: on an image smaller than the crop the one window is the image itself, not padded.
The text encoder's output is cached between calls (see :class:`mfuser_model.network.text.PromptTextEncoder`), so only
the image-dependent parts run per window.

To run the decode head on onnxruntime or TensorRT, build the Segmenter with
:func:`mfuser_model.deploy.decoder_backends.build_segmenter` (deployment depends on inference, never the reverse).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mfuser_model.errors import ConfigError
from mfuser_model.preprocess import normalize, rescale_size

__all__ = [
    "InferenceProtocol",
    "Precision",
    "SegmentationResult",
    "Segmenter",
    "labels_from_lowres",
    "network_size",
    "resize_to_network",
    "slide_scores",
    "slide_windows",
    "whole_scores",
]

Precision = Literal["fp32", "fp16", "bf16"]
ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) normalised -> (B, K, H, W) scores


class SegmentationResult(NamedTuple):
    """One image's prediction."""

    labels: np.ndarray  # (H, W) uint8 class ids
    confidence: np.ndarray  # (H, W) float32 in [0, 1]: the winning class's share of the class scores


def _pad_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    pad_h, pad_w = height - images.shape[-2], width - images.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h))  # zero = the dataset mean after normalisation


def _padded_size(images: torch.Tensor, multiple: int) -> tuple[int, int]:
    """(H, W) of ``images`` rounded up to a multiple of ``multiple``."""
    h, w = images.shape[-2:]
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def whole_scores(score_fn: ScoreFn, images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Scores of whole images, padded up to a multiple of ``multiple`` and cropped back: (B, K, H, W)."""
    h, w = images.shape[-2:]
    return score_fn(_pad_to(images, *_padded_size(images, multiple)))[..., :h, :w]


def slide_windows(height: int, width: int, crop_size: int, stride: int) -> tuple[int, int]:
    """(rows, columns) of sliding windows over a ``height`` x ``width`` image (mmseg's grid count)."""
    rows = max(height - crop_size + stride - 1, 0) // stride + 1
    cols = max(width - crop_size + stride - 1, 0) // stride + 1
    return rows, cols


def slide_scores(score_fn: ScoreFn, images: torch.Tensor, crop_size: int, stride: int,
                 num_classes: int, min_size: int = 1,
                 on_window: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Sliding-window scores (mmseg's ``slide_inference``): windows clipped to the image, averaged on overlap.

    ``on_window(done, total)`` is called after each window: a large image takes many forward passes, and a
    caller's progress report should move meanwhile (the core itself prints nothing).

    A window smaller than the crop (an image side below ``crop_size``) is decoded at its own size, unpadded, as the
    reference does; padding it would change its scores (the padding takes part in attention). Only sides below
    ``min_size``, which the network cannot run at all (the reference fails on them), are padded up to it.
    """
    b, _, h, w = images.shape
    rows, cols = slide_windows(h, w, crop_size, stride)
    total = images.new_zeros((b, num_classes, h, w))
    count = images.new_zeros((1, 1, h, w))
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop_size, h), min(c * stride + crop_size, w)
            y1, x1 = max(y2 - crop_size, 0), max(x2 - crop_size, 0)
            window = images[:, :, y1:y2, x1:x2]
            window = _pad_to(window, max(y2 - y1, min_size), max(x2 - x1, min_size))
            total[:, :, y1:y2, x1:x2] += score_fn(window)[:, :, : y2 - y1, : x2 - x1].float()
            count[:, :, y1:y2, x1:x2] += 1
            if on_window is not None:
                on_window(r * cols + c + 1, rows * cols)
    return total / count


def network_size(height: int, width: int, box: tuple[int, int] | None, *, enlarge: bool = False) -> tuple[int, int]:
    """(height, width) that fits ``box`` = (width, height) keeping the aspect ratio (mmseg's keep-ratio rule, the
    box turned to the image's orientation); images that already fit keep their size unless ``enlarge``."""
    if box is None:
        return height, width
    fit_w, fit_h = rescale_size(width, height, box)
    if fit_w > width and not enlarge:
        return height, width
    return max(fit_h, 1), max(fit_w, 1)


def resize_to_network(image: np.ndarray, box: tuple[int, int] | None, *, enlarge: bool = False) -> np.ndarray:
    """``image`` (H, W, C) resized bilinearly (as mmcv's resize) to :func:`network_size`; itself if unchanged."""
    height, width = network_size(*image.shape[:2], box, enlarge=enlarge)
    if (height, width) == image.shape[:2]:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class InferenceProtocol:
    """How a :class:`Segmenter` turns an image into scores: what a report must state for its numbers to be
    comparable (the paper: slide, 512 / 341, after the dataset's resize).

    Attributes:
        mode: ``"whole"`` or ``"slide"``.
        crop_size, stride: the sliding window (None in whole mode).
        input_box: ``(width, height)`` the network input is fitted into (None: images run at their own size).
        enlarge: smaller images are enlarged to fill ``input_box`` too.
    """

    mode: Literal["whole", "slide"]
    crop_size: int | None
    stride: int | None
    input_box: tuple[int, int] | None
    enlarge: bool

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the network sees for an image of this size."""
        return network_size(height, width, self.input_box, enlarge=self.enlarge)

    def windows(self, height: int, width: int) -> int:
        """Forward passes for one image of this size (before the resize to :meth:`network_size`)."""
        if self.mode == "whole":
            return 1
        rows, cols = slide_windows(*self.network_size(height, width), self.crop_size, self.stride)
        return rows * cols

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"mode": self.mode, "crop_size": self.crop_size, "stride": self.stride,
                "input_box": list(self.input_box) if self.input_box is not None else None, "enlarge": self.enlarge}

    def record(self, input_sizes: Mapping[tuple[int, int], int]) -> dict[str, Any]:
        """:meth:`to_dict` plus, per input size seen (``{(height, width): images}``), the network input size and
        the windows per image: ``inputs: [{"input": [h, w], "network": [h, w], "windows": n, "images": n}]``."""
        inputs = [{"input": [h, w], "network": list(self.network_size(h, w)), "windows": self.windows(h, w),
                   "images": int(n)} for (h, w), n in sorted(input_sizes.items())]
        return {**self.to_dict(), "inputs": inputs}

    def describe(self, input_sizes: Mapping[tuple[int, int], int] | None = None) -> str:
        """One line for a report, e.g. ``slide 512/341; network input 1024x2048 (h x w): 18 windows, 500 images``."""
        text = f"slide {self.crop_size}/{self.stride}" if self.mode == "slide" else "whole image"
        if not input_sizes:
            box = f"fit into {self.input_box[0]}x{self.input_box[1]} (w x h)" if self.input_box else "own size"
            return f"{text}; network input {box}"
        parts = []
        for row in self.record(input_sizes)["inputs"]:
            (nh, nw), windows = row["network"], row["windows"]
            parts.append(f"{nh}x{nw} (h x w): {windows} window{'s' if windows != 1 else ''}, {row['images']} "
                         f"image{'s' if row['images'] != 1 else ''}")
        return f"{text}; network input {'; '.join(parts)}"


class Segmenter:
    """Wraps an MFuser (or anything with its ``predict``) for numpy-in, labels-out use.

    Args:
        model: an :class:`~mfuser_model.network.mfuser.MFuser`; it is put in eval mode and moved to ``device``.
        mode: ``"whole"`` or ``"slide"``.
        crop_size, stride: the sliding window (defaults: the model's training crop, and 2/3 of it).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast; fp16 needs CUDA).
        input_box: ``(width, height)`` the network input must fit: :meth:`segment_batch` resizes every image
            (bilinear, keeping its aspect ratio, the box turned to the image's orientation as mmseg's keep-ratio
            resize does) so that the work per image is bounded whatever its resolution; results still come back
            at the image's own size (or the requested one). None: images run at their own size.
        enlarge: also enlarge images smaller than ``input_box`` to fit it (the paper's test protocol does); by
            default they run at their own size, as enlarging only adds work.
    """

    def __init__(self, model: torch.nn.Module, *, mode: Literal["whole", "slide"] = "whole",
                 crop_size: int | None = None, stride: int | None = None, device: str = "cpu",
                 precision: Precision = "fp32", input_box: tuple[int, int] | None = None,
                 enlarge: bool = False) -> None:
        if mode not in ("whole", "slide"):
            msg = f"mode must be 'whole' or 'slide', got {mode!r}"
            raise ConfigError(msg)
        if precision not in ("fp32", "fp16", "bf16"):
            msg = f"precision must be 'fp32', 'fp16' or 'bf16', got {precision!r}"
            raise ConfigError(msg)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            msg = f"device {device!r} requested but CUDA is not available"
            raise ConfigError(msg)
        if precision == "fp16" and self.device.type != "cuda":
            msg = "precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU"
            raise ConfigError(msg)
        self.model = model.to(self.device).eval()
        config = model.config
        self.mode = mode
        self.crop_size = crop_size or config.crop_size
        self.stride = stride or max(1, (self.crop_size * 2) // 3)
        self.precision = precision
        self.num_classes = config.num_classes
        # The pyramid's max-pool halves the token grid, so whole images are padded to 2 patches.
        self.multiple = 2 * config.patch_size
        if input_box is not None and min(input_box) < 1:
            msg = f"input_box must be two sizes >= 1, got {input_box!r}"
            raise ConfigError(msg)
        self.input_box = tuple(input_box) if input_box is not None else None
        self.enlarge = enlarge
        # Called as on_window(done, total) after each slide window (progress of large images); None: silent.
        self.on_window: Callable[[int, int], None] | None = None

    @property
    def protocol(self) -> InferenceProtocol:
        """The mode, window, and input resize this segmenter runs with (for reports)."""
        slide = self.mode == "slide"
        return InferenceProtocol(self.mode, self.crop_size if slide else None, self.stride if slide else None,
                                 self.input_box, self.enlarge)

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to before inference (see ``input_box``)."""
        return network_size(height, width, self.input_box, enlarge=self.enlarge)

    def network_input(self, image: np.ndarray) -> np.ndarray:
        """``image`` at :meth:`network_size`; the same array when already there."""
        return resize_to_network(image, self.input_box, enlarge=self.enlarge)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, K, H, W) float32 class scores."""
        images = images.to(self.device)
        with self._autocast():
            if self.mode == "whole":
                out = whole_scores(self.model.predict, images, self.multiple)
            else:
                out = slide_scores(self.model.predict, images, self.crop_size, self.stride, self.num_classes,
                                   min_size=self.multiple, on_window=self.on_window)
        return out.float()

    @torch.no_grad()
    def lowres_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Whole-image scores at the mask resolution: (B, K, h, w) float32 and the padded input size."""
        padded = _padded_size(images, self.multiple)
        with self._autocast():
            low = self.model.predict_lowres(_pad_to(images.to(self.device), *padded))
        return low.float(), padded

    def segment_batch(self, images: Sequence[np.ndarray],
                      output_sizes: Sequence[tuple[int, int] | None] | None = None, *,
                      with_confidence: bool = True) -> list[SegmentationResult]:
        """Segment (H, W, 3) uint8 RGB images. Images of equal size run as one batch.

        Args:
            images: the images; sizes may differ. Each is first resized to :meth:`network_size`.
            output_sizes: per image, the (height, width) of the outputs (default: the image's own size).
            with_confidence: compute the confidence maps (whole mode skips that work when False and returns
                an empty (0, 0) array; a node asks only while someone subscribes).
        """
        sizes = list(output_sizes) if output_sizes is not None else [None] * len(images)
        if len(sizes) != len(images):
            msg = f"got {len(images)} images but {len(sizes)} output sizes"
            raise ValueError(msg)
        sizes = [tuple(size or image.shape[:2]) for size, image in zip(sizes, images, strict=True)]
        inputs = [self.network_input(image) for image in images]
        results: list[SegmentationResult | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(inputs):
            groups.setdefault(tuple(image.shape), []).append(i)
        for indices in groups.values():
            batch = normalize([inputs[i] for i in indices], device=self.device)
            if self.mode == "whole":
                low, padded = self.lowres_scores(batch)
                for row, i in enumerate(indices):
                    results[i] = labels_from_lowres(low[row], tuple(batch.shape[-2:]), padded, sizes[i],
                                                    with_confidence=with_confidence)
            else:
                scores = self.scores(batch)
                for row, i in enumerate(indices):
                    results[i] = _to_result(scores[row: row + 1], sizes[i])
        return results  # type: ignore[return-value]

    def segment(self, image: np.ndarray, output_size: tuple[int, int] | None = None) -> SegmentationResult:
        """Segment one (H, W, 3) uint8 RGB image."""
        return self.segment_batch([image], [output_size])[0]


def _source_index(size_in: int, size_out: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's bilinear (align_corners=False) source rows for ``size_out`` outputs: i0, i1, weight of i1."""
    src = np.maximum((np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * np.float32(scale)
                     - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _pixels_of_cells(cells: tuple[np.ndarray, np.ndarray], y0: np.ndarray, x0: np.ndarray, h: int,
                     w: int) -> tuple[np.ndarray, np.ndarray]:
    """Output pixels (ys, xs) whose top-left source cell is one of ``cells`` (rows ``ci``, columns ``cj``).

    ``y0`` and ``x0`` never decrease, so each cell's pixels are one block of rows times one block of columns;
    expanding the few border cells is far cheaper than scanning a full-resolution mask.
    """
    ci, cj = cells
    row_start, row_end = np.searchsorted(y0, np.arange(h), "left"), np.searchsorted(y0, np.arange(h), "right")
    col_start, col_end = np.searchsorted(x0, np.arange(w), "left"), np.searchsorted(x0, np.arange(w), "right")
    rows, cols = row_end[ci] - row_start[ci], col_end[cj] - col_start[cj]
    count = rows * cols
    cell = np.repeat(np.arange(len(ci)), count)
    offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    cols_of = cols[cell]
    return row_start[ci][cell] + offset // cols_of, col_start[cj][cell] + offset % cols_of


_BORDER_PIXELS_PER_PASS = 1 << 20


def _cell_groups(ci: np.ndarray, cj: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: int, w: int,
                 max_pixels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(ci, cj)`` split into consecutive groups of cells that cover at most about ``max_pixels`` output pixels."""
    rows = np.bincount(y0, minlength=h)[ci]
    cols = np.bincount(x0, minlength=w)[cj]
    ends = np.cumsum(rows * cols)
    cuts = np.searchsorted(ends, np.arange(max_pixels, int(ends[-1]) if len(ends) else 0, max_pixels), "right")
    bounds = [0, *cuts.tolist(), len(ci)]
    return [(ci[a:b], cj[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


def _bilinear_plane(plane: np.ndarray, y0: np.ndarray, y1: np.ndarray, ly: np.ndarray, x0: np.ndarray,
                   x1: np.ndarray, lx: np.ndarray) -> np.ndarray:
    """One (h, w) plane resampled bilinearly at the source rows/columns of :func:`_source_index`."""
    rows = np.take(plane, y0, axis=0) * (1 - ly)[:, None] + np.take(plane, y1, axis=0) * ly[:, None]
    return np.take(rows, x0, axis=1) * (1 - lx) + np.take(rows, x1, axis=1) * lx


def labels_from_lowres(scores: torch.Tensor, image_size: tuple[int, int], padded_size: tuple[int, int],
                       out_size: tuple[int, int], *, with_confidence: bool = True) -> SegmentationResult:
    """Labels (and confidence) at ``out_size`` from low-resolution scores, without upsampling all K channels.

    Equal to ``argmax(bilinear_upsample(scores))`` of the padded image cropped to ``image_size`` (and resampled to
    ``out_size``), up to float rounding: where the four low-resolution cells a pixel interpolates between share
    one arg-max class k, every convex combination of them has arg-max k too, so only pixels near class borders
    need the K-channel interpolation. Confidence (winning score / score sum) is a ratio of two bilinear
    interpolations there, and computed from the interpolated K-vector at the border pixels. Gathers use
    ``np.take`` along one axis at a time, which runs at memory speed (torch's 2-D index_select does not).

    Args:
        scores: (K, h, w) scores of the padded image.
        image_size: (H, W) of the image before padding.
        padded_size: (H', W') the scores cover.
        out_size: (oh, ow) of the results.
    """
    s = scores.detach().float().cpu().numpy()
    k, h, w = s.shape
    (height, width), (oh, ow) = image_size, out_size
    y0, y1, ly = _source_index(h, oh, (height / oh) * (h / padded_size[0]))
    x0, x1, lx = _source_index(w, ow, (width / ow) * (w / padded_size[1]))
    # Arg-max over classes one plane at a time: contiguous passes, 4x faster than argmax(axis=0).
    best_low = s[0].copy()
    low_labels = np.zeros((h, w), np.uint8)
    for c in range(1, k):
        better = s[c] > best_low
        np.copyto(best_low, s[c], where=better)
        low_labels[better] = c
    down = np.minimum(np.arange(1, h + 1), h - 1)
    right = np.minimum(np.arange(1, w + 1), w - 1)
    below = np.take(low_labels, down, axis=0)
    uniform = (low_labels == below) & (low_labels == np.take(low_labels, right, axis=1)) & (
        low_labels == np.take(below, right, axis=1))
    labels = np.take(np.take(low_labels, y0, axis=0), x0, axis=1)
    border_ci, border_cj = np.nonzero(~uniform)
    # Channels-last table, so each corner gather reads K contiguous floats.
    table = np.ascontiguousarray(s.transpose(1, 2, 0)).reshape(h * w, k)
    if with_confidence:
        best = _bilinear_plane(best_low, y0, y1, ly, x0, x1, lx)
        total = _bilinear_plane(s.sum(axis=0), y0, y1, ly, x0, x1, lx)
    # Border pixels in bounded groups: on a noisy 4096x4096 output nearly every pixel is a border pixel, and one
    # (N, K) float block per corner would take gigabytes.
    for cells in _cell_groups(border_ci, border_cj, y0, x0, h, w, _BORDER_PIXELS_PER_PASS):
        ys, xs = _pixels_of_cells(cells, y0, x0, h, w)
        wy, wx = ly[ys, None], lx[xs, None]
        r0, r1, c0, c1 = y0[ys] * w, y1[ys] * w, x0[xs], x1[xs]
        mixed = (1 - wy) * ((1 - wx) * np.take(table, r0 + c0, axis=0) + wx * np.take(table, r0 + c1, axis=0)) + (
            wy * ((1 - wx) * np.take(table, r1 + c0, axis=0) + wx * np.take(table, r1 + c1, axis=0)))  # (N, K)
        labels[ys, xs] = mixed.argmax(axis=1)
        if with_confidence:
            best[ys, xs] = mixed.max(axis=1)
            total[ys, xs] = mixed.sum(axis=1)
    if not with_confidence:
        return SegmentationResult(labels, np.zeros((0, 0), np.float32))
    confidence = np.clip(best / np.maximum(total, np.float32(1e-12)), 0.0, 1.0, dtype=np.float32)
    return SegmentationResult(labels, confidence)


def _to_result(scores: torch.Tensor, size: tuple[int, int] | None) -> SegmentationResult:
    if size is not None and tuple(size) != tuple(scores.shape[-2:]):
        scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
    scores = scores[0].clamp_min(0)
    best, labels = scores.max(dim=0)
    confidence = best / scores.sum(dim=0).clamp_min(1e-12)
    return SegmentationResult(labels.to(torch.uint8).cpu().numpy(), confidence.cpu().numpy().astype(np.float32))
