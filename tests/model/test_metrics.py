"""ConfusionMatrix agrees with the official Cityscapes evaluator and follows mmseg's mIoU semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mfuser_model.classes import CITYSCAPES_CLASSES, IGNORE_INDEX
from mfuser_model.metrics import MIOU_RULES, ConfusionMatrix
from mfuser_model.report import class_table, percent


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


def _bdd100k_toolkit(pairs, num_classes):
    """Per-class IoU and mIoU as BDD100K's toolkit computes them (bdd100k/eval/seg.py, bdd100k 1.0.1 on PyPI),
    written independently of ConfusionMatrix: a square histogram one larger than the class count whose last
    row and column are "ignored" (ground truth 255 maps there and is dropped; predictions past the last id map
    there too), IoU 0/0 -> 0, and the mean over the classes seen in any ground-truth image."""
    size = num_classes + 1
    hist = np.zeros((size, size))
    seen = set()
    for pred, gt in pairs:
        g = gt.astype(np.int64).ravel()
        g[g == IGNORE_INDEX] = size - 1
        seen |= set(np.unique(g).tolist()) - {size - 1}
        p = pred.astype(np.int64).ravel()
        p[p >= size] = size - 1
        keep = (g >= 0) & (g < size - 1)
        hist += np.bincount(size * g[keep] + p[keep], minlength=size**2).reshape(size, size)
    with np.errstate(invalid="ignore", divide="ignore"):
        ious = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    ious[np.isnan(ious)] = 0
    ious = ious[:-1]
    return ious, float(np.mean(ious[sorted(seen)]))


def test_bdd100k_toolkit_rule_matches_an_independent_implementation():
    from mfuser_model.synthetic.scenes import render_scene

    rng = np.random.default_rng(3)
    pairs = []
    for i in range(3):
        _, gt = render_scene(np.random.default_rng([11, i]), 40, 80, "day")
        gt = gt.copy()
        gt[gt == 16] = IGNORE_INDEX  # no train in the ground truth ...
        pred = _noisy_prediction(gt, rng)
        pred[:4, :6] = 16  # ... but predicted: 0 in mmseg's mean, left out of the toolkit's
        pred[-3:, -5:] = 19  # an id past the classes (the toolkit's "ignored" column)
        pairs.append((pred, gt))
    cm = ConfusionMatrix(19)
    for pred, gt in pairs:
        cm.update(pred, gt)
    ious, mean = _bdd100k_toolkit(pairs, 19)
    np.testing.assert_allclose(cm.iou("bdd100k"), ious, rtol=0, atol=1e-12)
    assert cm.miou("bdd100k") == pytest.approx(mean, abs=1e-12)
    assert not cm.gt_present()[16] and cm.iou("mmseg")[16] == 0.0
    assert cm.miou("mmseg") < cm.miou("bdd100k")  # the predicted-but-absent class pulls mmseg's mean down
    d = cm.to_dict(CITYSCAPES_CLASSES, rule="bdd100k")
    assert d["mIoU"] == pytest.approx(mean) and d["miou_rule"] == "bdd100k"
    assert d["mIoU_by_rule"]["mmseg"] == pytest.approx(cm.miou("mmseg"))
    with pytest.raises(ValueError, match="not one of"):
        cm.miou("toolkit")


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
    cm.update(np.array([0, 13, 13, 0]), np.array([0, 13, 10, 0]))
    d = cm.to_dict()
    assert d["IoU"]["road"] == 1.0
    assert d["IoU"]["car"] == 0.5
    assert d["IoU"]["train"] is None
    assert d["Acc"]["sky"] == 0.0 and d["Acc"]["car"] == 1.0 and d["Acc"]["train"] is None
    assert d["mAcc"] == pytest.approx(2 / 3) and d["aAcc"] == pytest.approx(3 / 4)
    assert d["pixels"] == 4 and d["miou_rule"] == "mmseg" and d["miou_rule_text"] == MIOU_RULES["mmseg"]
    assert np.asarray(d["confusion_matrix"]).shape == (19, 20) and d["confusion_matrix"][10][13] == 1
    table = class_table(cm, CITYSCAPES_CLASSES)
    lines = table.splitlines()
    assert "| car " in table and "50.00%" in table
    assert "n/a" in lines[2 + CITYSCAPES_CLASSES.index("train")]
    # The mean row holds mean class accuracy (66.67%), not pixel accuracy (75.00%), which has its own row.
    mean_row = next(line for line in lines if line.startswith("| **mean**"))
    all_row = next(line for line in lines if line.startswith("| **all pixels**"))
    assert "66.67%" in mean_row and "75.00%" not in mean_row and "75.00%" in all_row
    assert "mmseg rule" in table
    assert percent(0.8193) == "81.93%" and percent(None) == "n/a" and percent(float("nan")) == "n/a"
