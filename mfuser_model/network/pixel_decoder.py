"""MSDeformAttn pixel decoder with text cross-attention (MFuser's `tqdmMSDeformAttnPixelDecoder`).

Mask2Former's pixel decoder ("Masked-attention Mask Transformer for Universal Image Segmentation", Cheng et al.,
arXiv:2112.01527, mmdet `MSDeformAttnPixelDecoder`) with tqdm's addition (Pak et al., ECCV 2024, "Textual Query-Driven
Mask Transformer for Domain Generalized Segmentation", arXiv:2407.09033), used unchanged by MFuser (arXiv:2504.03193):
after the deformable self-attention of every encoder layer, the pixels cross-attend to the K class text embeddings.

Also holds `Attention` and `FeedForward`, the plain transformer pieces shared with the decode head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfuser_model.errors import ConfigError
from mfuser_model.network.position_encoding import SinePositionEncoding
from mfuser_model.ops.ms_deform_attn import MSDeformAttn

__all__ = ["Attention", "ConvNorm", "FeedForward", "MSDeformAttnPixelDecoder", "PixelDecoderLayer"]


class Attention(nn.Module):
    """Multi-head attention, batch first, with `nn.MultiheadAttention`'s parameters and init.

    Written out (projections + `F.scaled_dot_product_attention`) so that a float additive mask of shape
    `(B, 1, Lq, Lk)` exports to ONNX; the parameter names (`in_proj_weight`, `in_proj_bias`, `out_proj`) are those of
    `nn.MultiheadAttention`, which the reference wraps, so its weights load unchanged.

    Args:
        embed_dim: channels.
        num_heads: heads.
        dropout: dropout on the attention probabilities (training only).
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            msg = f"Attention: embed_dim={embed_dim} is not divisible by num_heads={num_heads}"
            raise ConfigError(msg)
        dd = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **dd))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **dd))
        self.out_proj = nn.Linear(embed_dim, embed_dim, **dd)
        # nn.MultiheadAttention._reset_parameters
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Attend.

        Args:
            query: `(B, Lq, C)`.
            key: `(B, Lk, C)`.
            value: `(B, Lk, C)`.
            attn_mask: float, added to the logits, broadcastable to `(B, heads, Lq, Lk)`; `-inf` blocks.

        Returns:
            `(B, Lq, C)`.
        """
        B, Lq, C = query.shape
        M = self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(B, Lq, M, C // M).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(B, -1, M, C // M).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(B, -1, M, C // M).transpose(1, 2)
        dropout_p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, C))


class FeedForward(nn.Module):
    """Two-layer MLP with ReLU (mmcv `FFN` without its residual; the layer adds it).

    Args:
        embed_dim: input and output channels.
        hidden_dim: hidden channels.
        dropout: dropout after each linear.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        hidden_dim: int,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(embed_dim, hidden_dim, **dd)
        self.act = nn.ReLU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, embed_dim, **dd)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """`(..., C) -> (..., C)`."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class ConvNorm(nn.Module):
    """Conv2d → GroupNorm (→ ReLU): mmcv `ConvModule` with GN, same attribute names (`conv`, `gn`).

    Init as `ConvModule`'s constructor: Kaiming normal (fan_out, ReLU gain) conv, zero bias, GN weight 1, bias 0.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel; padding keeps the size.
        num_groups: GroupNorm groups.
        bias: conv bias (the reference uses one on the input projections only).
        relu: apply ReLU at the end.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        num_groups: int = 32,
        bias: bool = True,
        relu: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if out_channels % num_groups:
            msg = f"ConvNorm: out_channels={out_channels} is not divisible by num_groups={num_groups}"
            raise ConfigError(msg)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias, **dd)
        self.gn = nn.GroupNorm(num_groups, out_channels, **dd)
        self.act = nn.ReLU() if relu else nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """`(B, Cin, H, W) -> (B, Cout, H, W)`."""
        return self.act(self.gn(self.conv(x)))


class PixelDecoderLayer(nn.Module):
    """One encoder layer, post-norm: deformable self-attn → LN → cross-attn to text → LN → FFN → LN.

    Args:
        embed_dim: channels.
        num_heads: heads of both attentions.
        num_levels: feature levels of the deformable attention.
        num_points: sampling points per head and level.
        ffn_dim: FFN hidden channels.
        dropout: dropout inside attention and FFN.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 3,
        num_points: int = 4,
        ffn_dim: int = 2048,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.self_attn = MSDeformAttn(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_levels=num_levels,
            num_points=num_points,
            dropout=dropout,
            **dd,
        )
        self.norm1 = nn.LayerNorm(embed_dim, **dd)
        self.cross_attn = Attention(embed_dim=embed_dim, num_heads=num_heads, dropout=dropout, **dd)
        self.cross_drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim, **dd)
        self.ffn = FeedForward(embed_dim=embed_dim, hidden_dim=ffn_dim, dropout=dropout, **dd)
        self.norm3 = nn.LayerNorm(embed_dim, **dd)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        text: Tensor,
        text_pos: Tensor,
    ) -> Tensor:
        """Update the pixel tokens.

        Args:
            x: `(B, N, C)` pixel tokens of all levels.
            pos: `(B | 1, N, C)` sine + level embeddings.
            reference_points: `(1, N, L, 2)` normalised pixel centres.
            spatial_shapes: the L level sizes.
            text: `(B, K, C)` projected text embeddings (values).
            text_pos: `(1, K, C)` learned text positions (added to the keys).

        Returns:
            `(B, N, C)`.
        """
        x = self.norm1(x + self.self_attn(x + pos, reference_points, x, spatial_shapes))
        x = self.norm2(x + self.cross_drop(self.cross_attn(x + pos, text + text_pos, text)))
        return self.norm3(x + self.ffn(x))


def _reference_points(spatial_shapes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised pixel centres `(x, y)` of all levels, row-major: `(1, N, 1, 2)` (valid ratios are 1)."""
    points = []
    for h, w in spatial_shapes:
        y = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        points.append(torch.stack((xx.flatten(), yy.flatten()), dim=-1))
    return torch.cat(points, dim=0)[None, :, None, :]


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder: deformable-attention encoder over the low-res levels, with text cross-attention, then an FPN.

    The `num_levels` lowest-resolution inputs go through 1×1 conv + GN to `embed_dim`, get sine + level embeddings and
    `num_layers` `PixelDecoderLayer`s (then one more LayerNorm: the reference's `DetrTransformerDecoder.post_norm`). The
    remaining higher-resolution inputs are merged top-down (lateral 1×1 conv + GN, bilinear upsampling, 3×3 conv + GN
    + ReLU), and a 1×1 conv on the highest-resolution map gives the mask features.

    Args:
        in_channels: channels of each input, highest resolution first.
        text_dim: channels of the text embeddings.
        num_text_embeds: number K of text embeddings (classes); sets the learned text positions.
        embed_dim: channels inside (feat_channels = out_channels in the reference).
        num_heads: heads of both attentions.
        num_layers: encoder layers.
        num_levels: encoder levels (the lowest-resolution inputs).
        num_points: deformable sampling points.
        ffn_dim: FFN hidden channels.
        num_groups: GroupNorm groups.
        dropout: dropout inside the encoder.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        text_dim: int,
        num_text_embeds: int,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_layers: int = 6,
        num_levels: int = 3,
        num_points: int = 4,
        ffn_dim: int = 2048,
        num_groups: int = 32,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= num_levels < len(in_channels):
            msg = f"MSDeformAttnPixelDecoder: num_levels={num_levels} must be in [1, {len(in_channels) - 1}] "
            msg += f"for {len(in_channels)} inputs"
            raise ConfigError(msg)
        dd = {"device": device, "dtype": dtype}
        self.num_inputs = len(in_channels)
        self.num_levels = num_levels
        self.num_text_embeds = num_text_embeds
        # encoder levels from low to high resolution: inputs n-1, n-2, ...
        self.input_convs = nn.ModuleList(
            ConvNorm(in_channels=in_channels[i], out_channels=embed_dim, num_groups=num_groups, bias=True, **dd)
            for i in range(self.num_inputs - 1, self.num_inputs - 1 - num_levels, -1)
        )
        self.pos_encoding = SinePositionEncoding(num_feats=embed_dim // 2, normalize=True)
        self.level_encoding = nn.Embedding(num_levels, embed_dim, **dd)
        self.text_proj = nn.Linear(text_dim, embed_dim, **dd)
        self.text_pos_embed = nn.Embedding(num_text_embeds, embed_dim, **dd)
        self.layers = nn.ModuleList(
            PixelDecoderLayer(
                embed_dim=embed_dim,
                num_heads=num_heads,
                num_levels=num_levels,
                num_points=num_points,
                ffn_dim=ffn_dim,
                dropout=dropout,
                **dd,
            )
            for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(embed_dim, **dd)
        # FPN over the remaining inputs, from low to high resolution: inputs n-1-num_levels, ..., 0
        fpn_inputs = range(self.num_inputs - 1 - num_levels, -1, -1)
        # no conv bias where GN follows (mmcv ConvModule: bias = norm_cfg is None)
        self.lateral_convs = nn.ModuleList(
            ConvNorm(in_channels=in_channels[i], out_channels=embed_dim, num_groups=num_groups, bias=False, **dd)
            for i in fpn_inputs
        )
        self.output_convs = nn.ModuleList(
            ConvNorm(
                in_channels=embed_dim,
                out_channels=embed_dim,
                kernel_size=3,
                num_groups=num_groups,
                bias=False,
                relu=True,
                **dd,
            )
            for _ in fpn_inputs
        )
        self.mask_feature = nn.Conv2d(embed_dim, embed_dim, kernel_size=1, **dd)

    def forward(self, features: Sequence[Tensor], text: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Decode.

        Args:
            features: `len(in_channels)` maps `(B, C_i, H_i, W_i)`, highest resolution first.
            text: `(B, K, text_dim)` class text embeddings.

        Returns:
            `mask_features` `(B, embed_dim, H_0, W_0)` and the `num_levels` encoder outputs `(B, embed_dim, H_i, W_i)`
            from low to high resolution.

        Raises:
            ValueError: wrong number of feature maps or of text embeddings.
        """
        if len(features) != self.num_inputs:
            msg = f"MSDeformAttnPixelDecoder: expected {self.num_inputs} feature maps, got {len(features)}"
            raise ValueError(msg)
        if text.shape[-2] != self.num_text_embeds:
            msg = f"MSDeformAttnPixelDecoder: expected {self.num_text_embeds} text embeddings, got shape "
            msg += f"{tuple(text.shape)}"
            raise ValueError(msg)
        B = features[0].shape[0]
        tokens, pos, spatial_shapes = [], [], []
        for i, conv in enumerate(self.input_convs):
            feat = features[self.num_inputs - 1 - i]
            x = conv(feat)
            h, w = x.shape[-2:]
            spatial_shapes.append((h, w))
            level_pos = self.pos_encoding(x) + self.level_encoding.weight[i].view(1, -1, 1, 1).to(x.dtype)
            tokens.append(x.flatten(2).transpose(1, 2))  # (B, h·w, C)
            pos.append(level_pos.flatten(2).transpose(1, 2))  # (1, h·w, C)
        x = torch.cat(tokens, dim=1)
        pos_all = torch.cat(pos, dim=1)
        ref = _reference_points(spatial_shapes, x.device, x.dtype)
        text_feat = self.text_proj(text)
        text_pos = self.text_pos_embed.weight[None].to(text_feat.dtype)
        for layer in self.layers:
            x = layer(x, pos_all, ref, spatial_shapes, text_feat, text_pos)
        x = self.post_norm(x)

        outs = [
            t.transpose(1, 2).reshape(B, -1, h, w)
            for t, (h, w) in zip(x.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes, strict=True)
        ]
        for j, (lateral, output) in enumerate(zip(self.lateral_convs, self.output_convs, strict=True)):
            feat = features[self.num_inputs - 1 - self.num_levels - j]
            y = lateral(feat)
            y = y + F.interpolate(outs[-1], size=y.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(output(y))
        return self.mask_feature(outs[-1]), outs[: self.num_levels]
