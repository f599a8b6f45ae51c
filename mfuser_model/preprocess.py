"""Input normalisation: the OpenAI-CLIP mean/std every MFuser input is normalised with.

The reference pipeline normalises with CLIP statistics (as 0-255 values: mean 122.77/116.75/104.09, std
68.50/66.63/70.32); the backbones un-normalise and re-normalise internally for DINOv2 (ImageNet) and SigLIP.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["CLIP_MEAN", "CLIP_STD", "denormalize", "normalize", "rescale_size"]

# RGB, for images scaled to [0, 1].
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Size that fits ``(width, height)`` inside ``scale`` keeping the ratio, as ``mmcv.rescale_size`` with a tuple:
    the long edge to at most ``max(scale)`` and the short edge to at most ``min(scale)`` (up- or down-scaling)."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def normalize(images_uint8_rgb: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 RGB image(s) -> CLIP-normalised float32 tensor ``(B, 3, H, W)``.

    Args:
        images_uint8_rgb: numpy array or torch tensor, ``(H, W, 3)`` or ``(B, H, W, 3)`` uint8 RGB, or a list of
            equally sized ``(H, W, 3)`` arrays.
        device: where to put the result (the arithmetic runs there, so pass the GPU for large batches).

    Raises:
        ValueError: not uint8 or not 3-channel channels-last.
    """
    x = images_uint8_rgb
    if isinstance(x, (list, tuple)):
        x = np.stack([np.asarray(i) for i in x])
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        msg = f"expected a numpy array or torch tensor, got {type(images_uint8_rgb).__name__}"
        raise ValueError(msg)
    if t.dtype != torch.uint8:
        msg = f"expected uint8 RGB images, got dtype {t.dtype}"
        raise ValueError(msg)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 3:
        msg = f"expected (H, W, 3) or (B, H, W, 3) RGB images, got shape {tuple(t.shape)}"
        raise ValueError(msg)
    # One fused pass, x * 1/(255 std) - mean/std, on a channels-last view of the uint8 data: no NCHW copy
    # (2.4x faster than convert, divide, subtract, divide at 1080p). Convolutions accept channels-last input.
    t = t.to(device=device).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN, device=t.device, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=t.device, dtype=torch.float64).view(1, 3, 1, 1)
    scale = (1.0 / (255.0 * std)).float()
    shift = (-mean / std).float()
    return torch.addcmul(shift, t.float(), scale)


def denormalize(images: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize`: ``(B, 3, H, W)`` float -> ``(B, H, W, 3)`` uint8 RGB (for previews)."""
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    x = (images.detach().float() * std + mean).clamp_(0, 1).mul_(255).round_()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
