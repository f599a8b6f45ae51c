"""Sine positional encoding of DETR ("End-to-End Object Detection with Transformers", arXiv:2005.12872).

Same numbers as mmdet's `SinePositionalEncoding` for an unpadded map (no mask): position i along an axis of length
n is `i + 1`, optionally normalised to `(i + 1) / (n + eps) · scale`. Built from `arange`, so it follows the input
size when exported to ONNX.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinePositionEncoding", "sine_position_encoding"]


def sine_position_encoding(
    height: int,
    width: int,
    *,
    num_feats: int = 128,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    eps: float = 1e-6,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sine/cosine encoding of the (y, x) grid.

    Args:
        height: rows H.
        width: columns W.
        num_feats: channels per axis; the result has `2 · num_feats`.
        temperature: wavelength base.
        normalize: scale positions to `(0, scale]`.
        scale: the normalised range.
        eps: keeps the normalisation finite.
        device: result device.

    Returns:
        `(1, 2·num_feats, H, W)` float32: y channels first, then x; within each, sin/cos interleaved.
    """
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    if normalize:
        y = y / (y[-1:] + eps) * scale
        x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_y = y[:, None] / dim_t  # (H, F)
    pos_x = x[:, None] / dim_t  # (W, F)
    # even channels sin, odd channels cos, interleaved
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos_y = pos_y.t()[:, :, None].expand(num_feats, height, width)
    pos_x = pos_x.t()[:, None, :].expand(num_feats, height, width)
    return torch.cat((pos_y, pos_x), dim=0)[None]


class SinePositionEncoding(nn.Module):
    """Module form of `sine_position_encoding`; no parameters.

    Args:
        num_feats: channels per axis; the encoding has `2 · num_feats`.
        temperature: wavelength base.
        normalize: scale positions to `(0, scale]`.
        scale: the normalised range.
        eps: keeps the normalisation finite.
    """

    def __init__(
        self,
        *,
        num_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Encode the grid of `x` `(B, C, H, W)`; returns `(1, 2·num_feats, H, W)` in `x.dtype`."""
        pos = sine_position_encoding(
            x.shape[-2],
            x.shape[-1],
            num_feats=self.num_feats,
            temperature=self.temperature,
            normalize=self.normalize,
            scale=self.scale,
            eps=self.eps,
            device=x.device,
        )
        return pos.to(x.dtype)
