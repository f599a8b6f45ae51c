"""MFuser losses: identity assignment, class weights, point sampling, dice, alignment, deep supervision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    LossWeights,
    MFuserLoss,
    alignment_loss,
    dice_loss,
    mask_targets,
    point_sample,
    uncertain_point_coords,
)

K = 4


def _labels() -> torch.Tensor:
    # image 0: classes 0 (left half) and 2 (right half) with an ignored row; image 1: class 1 only.
    lab = torch.zeros(2, 8, 8, dtype=torch.long)
    lab[0, :, 4:] = 2
    lab[0, 0] = 255
    lab[1] = 1
    return lab


def test_mask_targets_tie_query_k_to_class_k_and_mark_absent_classes_no_object():
    cls, masks, present = mask_targets(_labels(), K)
    assert cls.tolist() == [[0, K, 2, K], [K, 1, K, K]]
    assert present.sum().item() == 3
    assert masks.shape == (3, 8, 8)
    # (image 0, class 0), (image 0, class 2), (image 1, class 1) in that order
    assert masks[0, 1:, :4].all() and not masks[0, :, 4:].any() and not masks[0, 0].any()
    assert masks[1, 1:, 4:].all()
    assert masks[2].all()


def test_point_sample_matches_grid_sample_with_align_corners_false():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # pixel centres sit at (i + 0.5) / 4 in normalised [0, 1] coordinates
    coords = torch.tensor([[[0.125, 0.125], [0.875, 0.125], [0.375, 0.625]]])
    out = point_sample(x, coords)
    assert out.shape == (1, 1, 3)
    assert out[0, 0].tolist() == pytest.approx([0.0, 3.0, 9.0])


def test_uncertain_points_favour_logits_near_zero():
    torch.manual_seed(0)
    logits = torch.full((1, 1, 32, 32), 10.0)
    logits[..., :, 16:] = 0.0  # the right half is maximally uncertain
    coords = uncertain_point_coords(logits, num_points=100, oversample_ratio=3.0, importance_sample_ratio=0.75)
    assert coords.shape == (1, 100, 2)
    assert (coords >= 0).all() and (coords <= 1).all()
    important = coords[0, :75, 0]
    assert (important > 0.5).float().mean() > 0.95  # importance points land in the uncertain half


def test_naive_dice_formula():
    logits = torch.tensor([[0.0, 0.0, 10.0, -10.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    p = logits.sigmoid()
    expected = 1 - (2 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
    assert dice_loss(logits, target, eps=1.0).item() == pytest.approx(expected.item())


def test_alignment_loss_averages_over_all_pixels_including_ignored():
    torch.manual_seed(0)
    scores = torch.randn(2, K, 4, 4)
    labels = _labels()
    up = F.interpolate(scores, size=(8, 8), mode="bilinear", align_corners=False)
    valid = labels != 255
    ce_valid = F.cross_entropy(up, labels, ignore_index=255, reduction="sum")
    assert alignment_loss(scores, labels).item() == pytest.approx((ce_valid / labels.numel()).item(), rel=1e-5)
    assert valid.sum() < labels.numel()


def test_classification_loss_uses_no_object_weight_and_weighted_average():
    w = LossWeights(num_points=16, align=0.0, deep_supervision=False)
    loss = MFuserLoss(K, w)
    torch.manual_seed(0)
    cls_logits = torch.randn(2, K, K + 1)
    masks = torch.randn(2, K, 4, 4)
    terms = loss([cls_logits], [masks], None, _labels())
    targets = torch.tensor([[0, K, 2, K], [K, 1, K, K]])
    weight = torch.tensor([1.0] * K + [0.1])
    ce = F.cross_entropy(cls_logits.view(-1, K + 1), targets.view(-1), weight=weight, reduction="sum")
    expected = 2.0 * ce / weight[targets.view(-1)].sum()
    assert terms["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert "loss_align" not in terms


def test_perfect_predictions_score_far_below_inverted_ones():
    labels = _labels().repeat_interleave(4, 1).repeat_interleave(4, 2)  # 32x32: fewer border points
    cls_t, _, _ = mask_targets(labels, K)
    cls_logits = F.one_hot(cls_t, K + 1).float() * 50.0
    onehot = F.one_hot(labels.clamp(max=K), K + 1)[..., :K].permute(0, 3, 1, 2).float()  # (B, K, 32, 32)
    onehot = onehot * (labels != 255).unsqueeze(1)
    loss = MFuserLoss(K, LossWeights(num_points=64))
    torch.manual_seed(0)
    good = loss([cls_logits], [(onehot * 2 - 1) * 5.0], onehot * 50.0, labels)
    torch.manual_seed(0)
    bad = loss([cls_logits], [(1 - 2 * onehot) * 5.0], (1 - onehot) * 50.0, labels)
    assert good["loss_cls"].item() < 1e-6
    assert good["loss_align"].item() < 1e-6
    # importance sampling seeks the mask borders, where bilinear points mix both sides, so "perfect" is not 0
    assert good["loss_mask"].item() < 0.2 * bad["loss_mask"].item()
    assert good["loss_dice"].item() < 0.2 * bad["loss_dice"].item()


def test_deep_supervision_names_every_decoder_output_and_sums_to_total():
    torch.manual_seed(0)
    n = 4
    cls = [torch.randn(2, K, K + 1, requires_grad=True) for _ in range(n)]
    masks = [torch.randn(2, K, 4, 4, requires_grad=True) for _ in range(n)]
    score = torch.randn(2, K, 2, 2, requires_grad=True)
    terms = MFuserLoss(K, LossWeights(num_points=32))(cls, masks, score, _labels())
    expected = {f"d{i}.{t}" for i in range(n - 1) for t in ("loss_cls", "loss_mask", "loss_dice")}
    expected |= {"loss_cls", "loss_mask", "loss_dice", "loss_align", "loss"}
    assert set(terms) == expected
    parts = sum(v for k, v in terms.items() if k != "loss")
    assert terms["loss"].item() == pytest.approx(parts.item(), rel=1e-6)
    terms["loss"].backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in cls + masks)
    assert score.grad.abs().sum() > 0


def test_absent_classes_get_no_mask_gradient_and_empty_batches_stay_finite():
    torch.manual_seed(0)
    masks = torch.randn(2, K, 4, 4, requires_grad=True)
    cls = torch.randn(2, K, K + 1)
    MFuserLoss(K, LossWeights(num_points=16, align=0.0))([cls], [masks], None, _labels())["loss"].backward()
    grad_per_query = masks.grad.abs().sum(dim=(2, 3))
    assert (grad_per_query[0, [1, 3]] == 0).all() and (grad_per_query[1, [0, 2, 3]] == 0).all()
    assert (grad_per_query[0, [0, 2]] > 0).all() and grad_per_query[1, 1] > 0

    ignored = torch.full((2, 8, 8), 255, dtype=torch.long)
    terms = MFuserLoss(K, LossWeights(num_points=16))([cls], [masks], torch.randn(2, K, 4, 4), ignored)
    assert all(math.isfinite(v.item()) for v in terms.values())
    assert terms["loss_mask"].item() == 0.0 and terms["loss_dice"].item() == 0.0


def test_mask_loss_normalises_by_masks_times_points_and_reducer():
    torch.manual_seed(0)
    masks = torch.zeros(2, K, 4, 4)
    cls = torch.zeros(2, K, K + 1)
    w = LossWeights(num_points=16, align=0.0)
    # all-zero logits: BCE is log 2 at every point whatever the target, so the mean is log 2 exactly
    terms = MFuserLoss(K, w)([cls], [masks], None, _labels())
    assert terms["loss_mask"].item() == pytest.approx(5.0 * math.log(2), rel=1e-5)
    # a reducer doubling the mask count (as if another rank had twice as many) halves it
    halved = MFuserLoss(K, w, num_masks_reducer=lambda n: 2 * n)([cls], [masks], None, _labels())
    assert halved["loss_mask"].item() == pytest.approx(2.5 * math.log(2), rel=1e-5)
