"""ConfusionMatrix agrees with the official Cityscapes evaluator and follows mmseg's mIoU semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mfuser_model.classes import CITYSCAPES_CLASSES, IGNORE_INDEX
from mfuser_model.metrics import ConfusionMatrix, format_table


def _noisy_prediction(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A prediction that is right on most pixels, with blocks of wrong classes and a few invalid (255) pixels."""
    pred = np.where(gt == IGNORE_INDEX, rng.integers(0, 19, gt.shape), gt).astype(np.uint8)
    flip = rng.random(gt.shape) < 0.2
    pred[flip] = rng.integers(0, 19, int(flip.sum()))
    h, w = gt.shape
    for _ in range(4):
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        pred[y : y + 8, x : x + 8] = rng.integers(0, 19)
    pred[rng.random(gt.shape) < 0.01] = IGNORE_INDEX
    return pred


def test_matches_cityscapes_official_evaluator(tmp_path):
    ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    from cityscapesscripts.helpers.labels import labels as cs_labels

    from mfuser_model.synthetic.scenes import render_scene
    from training.label_maps import CITYSCAPES_LABEL_TO_TRAIN, TRAIN_TO_CITYSCAPES_LABEL, build_lut

    args = ev.args
    args.evalInstLevelScore, args.evalPixelAccuracy, args.quiet, args.JSONOutput = False, False, True, False
    conf = ev.generateMatrix(args)
    to_label = build_lut(TRAIN_TO_CITYSCAPES_LABEL, default=0)
    to_train = build_lut(CITYSCAPES_LABEL_TO_TRAIN)
    ours = ConfusionMatrix(19)
    rng = np.random.default_rng(0)
    for i in range(4):
        _, gt_train = render_scene(np.random.default_rng([7, i]), 48, 96, "day")
        gt_ids = to_label[gt_train]
        # Sprinkle void label ids the evaluator ignores (static, parking, guard rail, ...).
        void = rng.random(gt_ids.shape) < 0.05
        gt_ids[void] = rng.choice([0, 4, 5, 9, 10, 14, 15, 16, 18, 29, 30], int(void.sum()))
        pred_train = _noisy_prediction(to_train[gt_ids], rng)
        gt_png, pred_png = tmp_path / f"gt{i}.png", tmp_path / f"pred{i}.png"
        Image.fromarray(gt_ids).save(gt_png)
        Image.fromarray(to_label[pred_train]).save(pred_png)  # 255 -> labelId 0, a miss in both tools
        ev.evaluatePair(str(pred_png), str(gt_png), conf, {}, {}, args)
        ours.update(pred_train, to_train[gt_ids])

    official = {lbl.trainId: ev.getIouScoreForLabel(lbl.id, conf, args) for lbl in cs_labels
                if not lbl.ignoreInEval and lbl.id >= 0}
    iou = ours.iou()
    for train_id, value in official.items():
        if math.isnan(value):
            assert math.isnan(iou[train_id])
        else:
            assert iou[train_id] == pytest.approx(value, abs=1e-9)
    official_mean = ev.getScoreAverage({str(k): v for k, v in official.items()}, args)
    assert ours.miou() == pytest.approx(official_mean, abs=1e-9)


def test_absent_classes_are_nan_and_skipped_in_the_mean():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 0, 1, 2]), np.array([0, 0, 1, 1]))
    iou = cm.iou()
    assert iou[0] == 1.0
    assert iou[1] == pytest.approx(1 / 2)  # tp 1, gt 2, pred 1
    assert iou[2] == 0.0  # predicted, never in ground truth
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 + 0.5 + 0) / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 4)


def test_ignore_pixels_and_invalid_predictions():
    cm = ConfusionMatrix(3)
    gt = np.array([[0, 1, 255], [2, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 255, 1], [2, 7, 0]], dtype=np.uint8)
    cm.update(pred, gt)
    # The ignored pixels add nothing; invalid predictions (255, 7) are misses of their ground-truth class.
    assert cm.matrix.sum() == 2
    inter, union = cm.intersection_union()
    assert inter.tolist() == [1, 0, 1]
    assert union.tolist() == [1, 1, 2]
    assert cm.pixel_accuracy() == pytest.approx(2 / 4)


def test_update_accepts_torch_any_shape_and_merges():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 19, (2, 16, 16))
    pred = rng.integers(0, 19, (2, 16, 16))
    a, b, whole = ConfusionMatrix(), ConfusionMatrix(), ConfusionMatrix()
    a.update(torch.from_numpy(pred[0]), torch.from_numpy(gt[0]))
    b.update(pred[1].reshape(-1), gt[1].reshape(-1))
    whole.update(torch.from_numpy(pred), gt)
    np.testing.assert_array_equal((a + b).matrix, whole.matrix)
    c = ConfusionMatrix()
    c.add_counts(a.counts_array())
    c.merge(b)
    np.testing.assert_array_equal(c.matrix, whole.matrix)
    assert whole.matrix.dtype == np.int64


def test_rejects_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[5\]"):
        cm.update(np.zeros(2), np.array([0, 5]))
    with pytest.raises(ValueError, match="merge"):
        cm.merge(ConfusionMatrix(4))


def test_to_dict_and_table():
    cm = ConfusionMatrix()
    cm.update(np.array([0, 13, 13]), np.array([0, 13, 10]))
    d = cm.to_dict()
    assert d["IoU"]["road"] == 1.0
    assert d["IoU"]["car"] == 0.5
    assert d["IoU"]["train"] is None
    assert d["pixels"] == 3
    table = format_table(cm)
    lines = table.splitlines()
    assert len(lines) == 2 + len(CITYSCAPES_CLASSES) + 1
    assert "| car " in table and "50.00" in table
    assert "nan" in lines[2 + CITYSCAPES_CLASSES.index("train")]
