"""Multi-target evaluation with the paper's protocol, and dataset opening (with optional synthetic generation).

Protocol (mmseg ``test.py --eval mIoU`` as MFuser runs it): each image resized keeping its ratio to fit
(2048, 1024) for Cityscapes and Mapillary or (1280, 720) for BDD100K, sliding window 512 / stride 341 with
overlapping scores averaged, scores resized back to the label's size, argmax, and a 19-class confusion matrix
accumulated over the whole set (ignore 255). One run evaluates several targets (GTAV -> Cityscapes, BDD100K,
Mapillary). Per target it writes ``iou.md`` (per-class table), ``iou.json`` (per-class IoU and accuracy, the
confusion matrix) and ``samples.png`` (image | ground truth | prediction rows, a colour legend below); both files
state the model file and its digest, the decoder backend, the inference protocol, the ground truth and the mIoU
rule (a target's ``miou_rule``: ``mmseg``, or ``bdd100k`` to compare with the BDD100K toolkit's numbers). Progress
(images, windows of large images, ETA) goes to the log.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mfuser_model.classes import colorize
from mfuser_model.inference import Segmenter
from mfuser_model.metrics import ConfusionMatrix
from mfuser_model.network.mfuser import MFuser
from mfuser_model.progress import ProgressLog
from mfuser_model.report import (
    class_table,
    decoder_backend_name,
    legend_image,
    model_file_record,
    percent,
    run_facts,
)
from training.config import DatasetSpec, EvalConfig
from training.datasets import (
    BDD100KDataset,
    CityscapesDataset,
    GTAVDataset,
    MapillaryDataset,
    SegmentationDataset,
    SynthiaDataset,
)
from training.distributed import DistContext, barrier
from training.errors import DatasetError
from training.transforms import EvalTransform

__all__ = ["TargetResult", "eval_scale", "evaluate_target", "evaluate_targets", "open_dataset", "sample_grid"]

_log = logging.getLogger(__name__)

# The paper's test resize boxes (w, h); other kinds are evaluated at their native size.
_PAPER_SCALES: dict[str, tuple[int, int]] = {"cityscapes": (2048, 1024), "mapillary": (2048, 1024),
                                              "bdd100k": (1280, 720)}
_SOURCE_SPLITS = {"cityscapes": "train", "bdd100k": "train", "mapillary": "training"}
_TARGET_SPLITS = {"cityscapes": "val", "bdd100k": "val", "mapillary": "validation"}


@dataclass
class TargetResult:
    """One target's outcome."""

    name: str
    confusion: ConfusionMatrix
    metrics: dict[str, Any]  # ConfusionMatrix.to_dict() plus "images"

    @property
    def miou(self) -> float:
        """Mean IoU by the target's rule (NaN if nothing was counted)."""
        return self.confusion.miou(self.metrics.get("miou_rule", "mmseg"))


def eval_scale(spec: DatasetSpec) -> tuple[int, int] | None:
    """The ``(w, h)`` resize box for ``spec`` (None = native size)."""
    if spec.scale == "native":
        return None
    if spec.scale == "auto":
        return _PAPER_SCALES.get(spec.kind)
    return tuple(spec.scale)  # type: ignore[return-value]


def _split(spec: DatasetSpec, role: str) -> str | None:
    if spec.split is not None:
        return spec.split
    return (_SOURCE_SPLITS if role == "source" else _TARGET_SPLITS).get(spec.kind)


def _construct(spec: DatasetSpec, split: str | None, **kwargs: Any) -> SegmentationDataset:
    root = Path(spec.root)
    if spec.kind == "gtav":
        return GTAVDataset(root, split=split, **kwargs)
    if spec.kind == "synthia":
        return SynthiaDataset(root, **kwargs)
    if spec.kind == "cityscapes":
        return CityscapesDataset(root, split=split or "val", **kwargs)
    if spec.kind == "bdd100k":
        return BDD100KDataset(root, split=split or "val", **kwargs)
    return MapillaryDataset(root, split=split or "validation", version=spec.label_version, mapping=spec.label_map,
                            **kwargs)


def _render(spec: DatasetSpec, root: Path, split: str | None) -> None:
    """Write ``spec.synthetic`` scenes into ``root`` in ``spec.kind``'s folder layout."""
    from training import synthetic  # noqa: PLC0415  (cv2 drawing code, only needed here)

    syn = spec.synthetic
    assert syn is not None  # checked by the caller
    size = tuple(syn.size)
    if spec.kind == "gtav":
        synthetic.write_gtav(root, syn.num_images, size=size, seed=syn.seed, style=syn.style)
    elif spec.kind == "synthia":
        synthetic.write_synthia(root, syn.num_images, size=size, seed=syn.seed, style=syn.style)
    elif spec.kind == "cityscapes":
        synthetic.write_cityscapes(root, syn.num_images, size=size, style=syn.style, split=split or "val",
                                   seed=syn.seed)
    elif spec.kind == "bdd100k":
        synthetic.write_bdd100k(root, syn.num_images, size=size, style=syn.style, split=split or "val",
                                seed=syn.seed)
    else:
        synthetic.write_mapillary(root, syn.num_images, size=size, style=syn.style, split=split or "validation",
                                  seed=syn.seed)


def generate_synthetic(spec: DatasetSpec, split: str | None) -> Path:
    """Render ``spec.synthetic`` into ``spec.root`` (which must not exist yet), atomically by folder rename."""
    root = Path(spec.root)
    if root.exists():
        msg = f"{root}: exists but is not a readable {spec.kind} dataset; refusing to write synthetic data into it"
        raise DatasetError(msg)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _log.info("rendering %d synthetic %s images (%s) into %s", spec.synthetic.num_images, spec.kind,
              spec.synthetic.style, root)
    try:
        _render(spec, tmp, split)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def open_dataset(spec: DatasetSpec, *, role: str = "target", generate: bool = False,
                 ctx: DistContext | None = None, **kwargs: Any) -> SegmentationDataset:
    """Open ``spec`` as a dataset; with ``generate`` and a ``synthetic`` section, render it first if missing.

    Under DDP only rank 0 renders; the others wait at a barrier.

    Raises:
        DatasetError: the folder is missing or malformed (and cannot be generated).
    """
    ctx = ctx or DistContext()
    split = _split(spec, role)
    can_generate = generate and spec.synthetic is not None
    if can_generate and not Path(spec.root).exists():
        if ctx.is_main:
            generate_synthetic(spec, split)
        barrier(ctx)
    try:
        return _construct(spec, split, **kwargs)
    except DatasetError as err:
        if spec.synthetic is not None and not generate:
            msg = f"{err} (this config can render synthetic data there: set data.generate_if_missing=true)"
            raise DatasetError(msg) from err
        raise


def sample_grid(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], palette: Sequence[Sequence[int]],
                max_width: int = 512, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Stack ``(image RGB, ground truth, prediction)`` rows side by side into one RGB grid.

    Each row is scaled so that the three panels together are at most ``max_width * 3`` pixels wide; with
    ``class_names``, a colour legend (the same palette) goes below.
    """
    pal = tuple(tuple(int(v) for v in c) for c in palette)
    panels = []
    for image, gt, pred in rows:
        h, w = gt.shape
        scale = min(1.0, max_width / w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        gt_rgb = cv2.resize(colorize(gt.astype(np.uint8), pal), size, interpolation=cv2.INTER_NEAREST)
        pred_rgb = cv2.resize(colorize(pred.astype(np.uint8), pal), size, interpolation=cv2.INTER_NEAREST)
        panels.append(np.concatenate([img, gt_rgb, pred_rgb], axis=1))
    width = max(p.shape[1] for p in panels)
    padded = [np.pad(p, ((0, 2), (0, width - p.shape[1]), (0, 0))) for p in panels]
    if class_names is not None:
        legend = legend_image(class_names, palette, width)
        padded.append(np.pad(legend, ((0, 0), (0, max(0, width - legend.shape[1])), (0, 0)))[:, :width])
    return np.concatenate(padded, axis=0)


def evaluate_target(segmenter: Segmenter, dataset: SegmentationDataset, scale: tuple[int, int] | None, *,
                    ctx: DistContext | None = None, max_images: int | None = None, num_samples: int = 0,
                    input_sizes: Counter[tuple[int, int]] | None = None, progress: ProgressLog | None = None,
                    ) -> tuple[ConfusionMatrix, list[tuple[np.ndarray, ...]]]:
    """Accumulate the confusion matrix of ``segmenter`` over ``dataset`` (this rank's share under DDP).

    ``input_sizes``, when given, counts the (height, width) the images reach the segmenter with (after the
    resize to ``scale``), over all ranks: with the segmenter's protocol they give the windows per image.
    ``progress`` is told of every image of this rank, and of the slide windows within one.

    Returns:
        The (all-reduced) confusion matrix and, on rank 0, up to ``num_samples`` (image, gt, pred) rows.
    """
    ctx = ctx or DistContext()
    num_classes = segmenter.num_classes
    cm = ConfusionMatrix(num_classes)
    transform = EvalTransform(scale)
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    samples: list[tuple[np.ndarray, ...]] = []
    sizes: Counter[tuple[int, int]] = Counter()
    segmenter.on_window = progress.partial if progress is not None else None
    for index in range(ctx.rank, count, ctx.world_size):
        raw = dataset.load(index)
        item = transform(raw)
        sizes[tuple(item["image"].shape[-2:])] += 1
        scores = segmenter.scores(item["image"].unsqueeze(0))  # (1, K, h', w') at the resized size
        h, w = item["ori_size"]
        if scores.shape[-2:] != (h, w):
            scores = F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=False)
        pred = scores[0].argmax(0).cpu().numpy()
        cm.update(pred, raw["label"])
        if ctx.is_main and len(samples) < num_samples:
            samples.append((raw["image"], raw["label"], pred))
        if progress is not None:
            progress.update()
    segmenter.on_window = None
    if ctx.distributed:
        counts = torch.from_numpy(cm.counts_array()).to(ctx.device)
        torch.distributed.all_reduce(counts)
        cm = ConfusionMatrix(num_classes)
        cm.add_counts(counts.cpu().numpy())
        gathered: list[Counter | None] = [None] * ctx.world_size
        torch.distributed.all_gather_object(gathered, sizes)
        sizes = sum((c for c in gathered if c is not None), Counter())
    if input_sizes is not None:
        input_sizes.update(sizes)
    return cm, samples


def write_target_report(out_dir: Path, result: TargetResult, class_names: Sequence[str],
                        samples: Sequence[tuple[np.ndarray, ...]], palette: Sequence[Sequence[int]]) -> None:
    """``iou.md``, ``iou.json`` and (if there are samples) ``samples.png`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    m = result.metrics
    rule = m.get("miou_rule", "mmseg")
    table = class_table(result.confusion, class_names, rule)
    gt = m.get("ground_truth")
    gt_text = (f"{gt['dataset']} `{gt['root']}` split {gt['split']}, {gt['labels']}; label map {gt['label_map']} "
               f"({gt['label_map_source']})" if gt else None)
    facts = run_facts(model=m.get("model", {}), backend=m.get("decoder_backend", "torch"),
                      inference=m.get("inference", {}).get("summary"), ground_truth=gt_text, rule=rule)
    header = f"# {result.name}\n\n" + "\n".join([*facts, f"- images: {m.get('images', 'n/a')}"]) + "\n\n"
    (out_dir / "iou.md").write_text(f"{header}{table}\n", encoding="utf-8")
    (out_dir / "iou.json").write_text(json.dumps(m, indent=1), encoding="utf-8")
    if samples:
        grid = sample_grid(samples, palette, class_names=class_names)
        cv2.imwrite(str(out_dir / "samples.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def evaluate_targets(model: MFuser, targets: Sequence[DatasetSpec], cfg: EvalConfig, out_dir: str | Path, *,
                     ctx: DistContext | None = None, generate: bool = False,
                     model_file: str | Path | None = None) -> dict[str, TargetResult]:
    """Evaluate ``model`` on every target and write the reports under ``out_dir/<target name>/``.

    ``model_file`` is the whole-model file ``model`` came from (its digest goes into the reports; None: weights
    in training). The model is left in eval mode; callers that keep training switch it back.
    """
    ctx = ctx or DistContext()
    out_dir = Path(out_dir)
    device = str(ctx.device)
    segmenter = Segmenter(model, mode=cfg.mode, crop_size=cfg.crop_size, stride=cfg.stride, device=device,
                          precision=cfg.precision)
    class_names = list(model.config.class_names)
    model_record = (model_file_record(model_file) if model_file else
                    {"file": None, "tensors_sha256": None, "note": "weights in training (no model file)"})
    results: dict[str, TargetResult] = {}
    summary: dict[str, Any] = {}
    for spec in targets:
        dataset = open_dataset(spec, role="target", generate=generate, ctx=ctx)
        scale = eval_scale(spec)
        sizes: Counter[tuple[int, int]] = Counter()
        images = len(dataset) if spec.max_images is None else min(len(dataset), spec.max_images)
        share = len(range(ctx.rank, images, ctx.world_size))
        progress = ProgressLog(share, spec.name, _log.info) if ctx.is_main else None
        cm, samples = evaluate_target(segmenter, dataset, scale, ctx=ctx, max_images=spec.max_images,
                                      num_samples=cfg.num_samples, input_sizes=sizes, progress=progress)
        metrics = cm.to_dict(class_names, rule=spec.miou_rule)
        metrics["images"] = images
        metrics["model"] = model_record
        metrics["decoder_backend"] = decoder_backend_name(model)
        metrics["ground_truth"] = dataset.ground_truth_info()
        resize = f"resized keeping the ratio to fit {scale[0]}x{scale[1]} (w x h)" if scale else "native size"
        metrics["inference"] = {**segmenter.protocol.record(sizes),
                                "resize_box": list(scale) if scale is not None else None,
                                "summary": f"{resize}, then {segmenter.protocol.describe(sizes)}"}
        result = TargetResult(spec.name, cm, metrics)
        results[spec.name] = result
        summary[spec.name] = metrics["mIoU"]
        if ctx.is_main:
            write_target_report(out_dir / spec.name, result, class_names, samples, model.config.palette)
            gt = metrics["ground_truth"]
            _log.info("%s: mIoU %s (%s rule) over %d images; labels %s, label map %s (%s)", spec.name,
                      percent(result.miou), spec.miou_rule, metrics["images"], gt["labels"], gt["label_map"],
                      gt["label_map_source"])
    if ctx.is_main and results:
        (out_dir / "summary.json").parent.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return results
