"""MFuser's training losses: Mask2Former-style per-class mask losses plus the pixel-text alignment loss.

Reference: the tqdm/MFuser head (mmseg 0.16 fork) with mmdet's Mask2Former losses.

- Query k is tied to class k (``IdentityAssigner``; no Hungarian matching). A class present in the crop gets its
  binary mask as target; an absent class gets the no-object label and no mask loss.
- Classification: cross-entropy over K+1 classes, class weights ``[1]*K + [0.1]``, averaged by the summed class
  weights of the targets (mmdet's ``avg_factor``), weight 2.0.
- Mask: BCE-with-logits on 12,544 points per mask chosen by PointRend importance sampling (oversample 3.0,
  importance ratio 0.75, uncertainty ``-|logit|``), averaged over masks x points, weight 5.0.
- Dice: naive dice (``2|X∩Y| / (|X| + |Y|)``, sigmoid, eps 1.0) on the same points, averaged over masks, weight 5.0.
- Deep supervision: the three terms for every decoder output (the prediction before the first layer and after
  each layer), equal weights; mmdet names them ``d0.*`` ... and the final one without prefix.
- Alignment: the pixel-text score map, upsampled to the label, softmax cross-entropy (ignore 255), weight 1.0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F

from mfuser_model.classes import IGNORE_INDEX
from mfuser_model.config_io import NonNegFloat, PosFloat, PosInt, Range, UnitFloat, check_fields

__all__ = [
    "LossWeights",
    "MFuserLoss",
    "alignment_loss",
    "dice_loss",
    "mask_targets",
    "point_sample",
    "uncertain_point_coords",
]


@dataclass(frozen=True)
class LossWeights:
    """Weights and point-sampling numbers of :class:`MFuserLoss` (defaults: the reference's)."""

    cls: NonNegFloat = 2.0
    mask: NonNegFloat = 5.0
    dice: NonNegFloat = 5.0
    align: NonNegFloat = 1.0
    no_object: NonNegFloat = 0.1
    num_points: PosInt = 12544
    oversample_ratio: Annotated[float, Range(ge=1)] = 3.0  # PointRend draws oversample_ratio * P candidates
    importance_sample_ratio: UnitFloat = 0.75
    dice_eps: PosFloat = 1.0
    deep_supervision: bool = True

    def __post_init__(self) -> None:
        check_fields(self)


def point_sample(inputs: torch.Tensor, coords: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinear values of ``inputs`` (N, C, H, W) at normalised ``coords`` (N, P, 2) in [0, 1] (x, y) -> (N, C, P).

    mmcv's ``point_sample``: ``grid_sample`` on ``2 * coords - 1`` with ``align_corners=False``.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (N, P, 1, 2)
    return F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners).squeeze(3)


def uncertain_point_coords(mask_logits: torch.Tensor, num_points: int, oversample_ratio: float,
                           importance_sample_ratio: float,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """PointRend training points (mmdet ``get_uncertain_point_coords_with_randomness``), (N, P, 2) in [0, 1].

    ``oversample_ratio * P`` random points are scored by uncertainty ``-|logit|``; the ``importance * P`` most
    uncertain are kept and the rest of the ``P`` are fresh uniform points.

    Args:
        mask_logits: (N, 1, H, W) logits of one class-agnostic mask each.
        generator: random source (default: torch's global generator, whose state checkpoints carry).
    """
    n = mask_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=mask_logits.device, generator=generator)
    uncertainty = -point_sample(mask_logits.float(), coords).abs()  # (N, 1, S)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainty[:, 0], k=num_uncertain, dim=1).indices  # (N, U)
    picked = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        rand = torch.rand(n, num_random, 2, device=mask_logits.device, generator=generator)
        picked = torch.cat([picked, rand], dim=1)
    return picked


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Naive dice per mask (mmdet ``DiceLoss(naive_dice=True)``): ``1 - (2 Σ p t + eps) / (Σ p + Σ t + eps)``.

    Args:
        logits: (N, P) point logits; targets: (N, P) in {0, 1}.

    Returns:
        (N,) losses (not reduced).
    """
    probs = logits.sigmoid()
    inter = (probs * targets).sum(1)
    return 1.0 - (2.0 * inter + eps) / (probs.sum(1) + targets.sum(1) + eps)


def mask_targets(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class targets of a label batch under the identity assignment (query k <-> class k).

    Args:
        labels: (B, H, W) int64 train ids, 255 = ignore.

    Returns:
        ``class_targets`` (B, K) int64: k where class k is present, else K (no object);
        ``masks`` (M, H, W) float: the binary mask of each present (image, class) pair, in (image, class) order;
        ``present`` (B, K) bool.
    """
    b = labels.shape[0]
    valid = (labels >= 0) & (labels < num_classes)
    flat = torch.where(valid, labels, torch.full_like(labels, num_classes)).view(b, -1)
    counts = torch.zeros(b, num_classes + 1, dtype=torch.long, device=labels.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    present = counts[:, :num_classes] > 0  # (B, K)
    ks = torch.arange(num_classes, device=labels.device)
    class_targets = torch.where(present, ks.expand(b, -1), torch.full_like(present, num_classes, dtype=torch.long))
    bi, ki = present.nonzero(as_tuple=True)
    masks = (labels[bi] == ki.view(-1, 1, 1)).float()  # (M, H, W)
    return class_targets, masks, present


def alignment_loss(score_map: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-text alignment: score map (B, K, h, w) bilinear to the label size, softmax cross-entropy.

    The mean runs over *all* pixels, ignored ones contributing zero: mmseg 0.16's ``CrossEntropyLoss`` with
    ``reduction='mean'`` (no ``avg_non_ignore``) does so, and the reference's ``identity_head`` uses it.
    """
    logits = F.interpolate(score_map.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none").mean()


class MFuserLoss:
    """All MFuser loss terms for one batch: ``loss(output, labels) -> {name: scalar}`` with ``"loss"`` the total.

    Term names follow mmdet: ``loss_cls``, ``loss_mask``, ``loss_dice`` for the final decoder output, ``d{i}.*`` for
    the earlier ones (``d0`` = before the first decoder layer), and ``loss_align`` for the score map.

    Args:
        num_classes: K.
        weights: loss weights and point-sampling numbers.
        num_masks_reducer: maps the local number of target masks to the number used for averaging. Under DDP
            this is the mean over ranks (mmdet's ``reduce_mean``), so every rank normalises alike.
    """

    def __init__(self, num_classes: int, weights: LossWeights | None = None,
                 num_masks_reducer: Callable[[float], float] | None = None) -> None:
        self.num_classes = num_classes
        self.w = weights or LossWeights()
        self.class_weight = torch.tensor([1.0] * num_classes + [self.w.no_object])
        self.num_masks_reducer = num_masks_reducer

    def _single(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor, class_targets: torch.Tensor,
                masks: torch.Tensor, present: torch.Tensor, num_masks: float) -> tuple[torch.Tensor, ...]:
        """The three terms for one decoder output: cls (B, K, K+1), masks (B, K, h, w)."""
        w = self.w
        k1 = cls_logits.shape[-1]
        class_weight = self.class_weight.to(cls_logits.device)
        flat_targets = class_targets.reshape(-1)
        ce = F.cross_entropy(cls_logits.float().reshape(-1, k1), flat_targets, weight=class_weight, reduction="none")
        loss_cls = ce.sum() / class_weight[flat_targets].sum().clamp_min(1e-12)

        preds = mask_logits[present].float()  # (M, h, w), same (image, class) order as ``masks``
        if preds.shape[0] == 0:  # nothing labelled in the batch: keep the graph, add nothing
            zero = mask_logits.sum() * 0.0
            return w.cls * loss_cls, zero, zero
        with torch.no_grad():
            coords = uncertain_point_coords(preds.unsqueeze(1), w.num_points, w.oversample_ratio,
                                            w.importance_sample_ratio)
            point_targets = point_sample(masks.unsqueeze(1), coords).squeeze(1)  # (M, P)
        point_logits = point_sample(preds.unsqueeze(1), coords).squeeze(1)  # (M, P)
        loss_dice = dice_loss(point_logits, point_targets, w.dice_eps).sum() / num_masks
        bce = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction="sum")
        loss_mask = bce / (num_masks * w.num_points)
        return w.cls * loss_cls, w.mask * loss_mask, w.dice * loss_dice

    def __call__(self, class_logits: Sequence[torch.Tensor], mask_logits: Sequence[torch.Tensor],
                 score_map: torch.Tensor | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms of one batch.

        Args:
            class_logits: per decoder output (B, K, K+1), last = final.
            mask_logits: per decoder output (B, K, h, w).
            score_map: (B, K, h', w') pixel-text scores (None skips the alignment term).
            labels: (B, H, W) int64 train ids, 255 = ignore.
        """
        if len(class_logits) != len(mask_logits):
            msg = f"{len(class_logits)} class-logit outputs but {len(mask_logits)} mask-logit outputs"
            raise ValueError(msg)
        class_targets, masks, present = mask_targets(labels, self.num_classes)
        num_masks = float(masks.shape[0])
        if self.num_masks_reducer is not None:
            num_masks = self.num_masks_reducer(num_masks)
        num_masks = max(num_masks, 1.0)
        stages = list(range(len(class_logits)))
        if not self.w.deep_supervision:
            stages = stages[-1:]
        out: dict[str, torch.Tensor] = {}
        last = len(class_logits) - 1
        for i in stages:
            terms = self._single(class_logits[i], mask_logits[i], class_targets, masks, present, num_masks)
            prefix = "" if i == last else f"d{i}."
            for name, value in zip(("loss_cls", "loss_mask", "loss_dice"), terms, strict=True):
                out[prefix + name] = value
        if score_map is not None and self.w.align > 0:
            out["loss_align"] = self.w.align * alignment_loss(score_map, labels)
        out["loss"] = torch.stack(list(out.values())).sum()
        return out
