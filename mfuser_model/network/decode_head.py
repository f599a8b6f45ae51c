"""MFuser decode head: a Mask2Former decoder whose K queries are the K class text embeddings.

Mask2Former ("Masked-attention Mask Transformer for Universal Image Segmentation", Cheng et al., arXiv:2112.01527)
as adapted by tqdm ("Textual Query-Driven Mask Transformer for Domain Generalized Segmentation", Pak et al.,
arXiv:2407.09033) and used unchanged by MFuser ("Mamba as a Bridge", Zhang et al., CVPR 2025, arXiv:2504.03193):
the reference's `tqdmHead`. Query k is class k (no Hungarian matching), so the query contents are an MLP of the
(enhanced) text embeddings and the class head is a plain linear layer over K classes + no-object.

The forward has no data-dependent Python control flow, so it traces and exports to ONNX (opset 17).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfuser_model.errors import ConfigError
from mfuser_model.network.pixel_decoder import Attention, FeedForward, MSDeformAttnPixelDecoder
from mfuser_model.network.position_encoding import SinePositionEncoding

__all__ = ["HeadOutput", "MFuserHead", "TransformerDecoderLayer", "mask_attention_bias", "semantic_scores"]


class HeadOutput(NamedTuple):
    """Per-stage predictions; index 0 is made from the queries before the first decoder layer, -1 is final.

    Attributes:
        class_logits: `num_decoder_layers + 1` tensors `(B, K, K + 1)`; the last class is "no object".
        mask_logits: `num_decoder_layers + 1` tensors `(B, K, H/4, W/4)` (the resolution of the stride-4 input).
    """

    class_logits: list[Tensor]
    mask_logits: list[Tensor]


class TransformerDecoderLayer(nn.Module):
    """Mask2Former decoder layer, post-norm: masked cross-attn → LN → self-attn → LN → FFN → LN.

    Args:
        embed_dim: channels.
        num_heads: heads of both attentions.
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
        ffn_dim: int = 2048,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.cross_attn = Attention(embed_dim=embed_dim, num_heads=num_heads, dropout=dropout, **dd)
        self.norm1 = nn.LayerNorm(embed_dim, **dd)
        self.self_attn = Attention(embed_dim=embed_dim, num_heads=num_heads, dropout=dropout, **dd)
        self.norm2 = nn.LayerNorm(embed_dim, **dd)
        self.ffn = FeedForward(embed_dim=embed_dim, hidden_dim=ffn_dim, dropout=dropout, **dd)
        self.norm3 = nn.LayerNorm(embed_dim, **dd)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, attn_bias: Tensor
    ) -> Tensor:
        """Update the queries.

        Args:
            query: `(B, Q, C)` query contents.
            query_pos: `(1, Q, C)` learned query positions.
            memory: `(B, N, C)` one level's pixel tokens (level embedding added).
            memory_pos: `(1, N, C)` their sine positions.
            attn_bias: `(B, 1, Q, N)` additive mask, `-inf` where a query may not look.

        Returns:
            `(B, Q, C)`.
        """
        q = query + query_pos
        query = self.norm1(query + self.drop(self.cross_attn(q, memory + memory_pos, memory, attn_bias)))
        q = query + query_pos
        query = self.norm2(query + self.drop(self.self_attn(q, q, query)))
        return self.norm3(query + self.ffn(query))


def mask_attention_bias(mask_logits: Tensor, size: Sequence[int]) -> Tensor:
    """Mask2Former's masked attention as an additive bias.

    A query may look only where its current mask, resized bilinearly to `size`, has sigmoid ≥ 0.5; a query whose
    mask is empty everywhere looks everywhere (the reference resets all-masked rows to unmasked).

    Args:
        mask_logits: `(B, Q, h, w)`.
        size: target `(H, W)` of the attended level.

    Returns:
        `(B, 1, Q, H·W)` float of `mask_logits.dtype`: 0 or `-inf`; no gradient.
    """
    m = F.interpolate(mask_logits.detach(), size=tuple(size), mode="bilinear", align_corners=False).flatten(2)
    blocked = m.sigmoid() < 0.5
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    bias = torch.where(blocked, torch.full_like(m, float("-inf")), torch.zeros_like(m))
    return bias[:, None]


def semantic_scores(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-class score map: Σ_q softmax(cls_q)[c] · sigmoid(mask_q), no-object dropped.

    Args:
        class_logits: `(B, Q, K + 1)`.
        mask_logits: `(B, Q, h, w)`.

    Returns:
        `(B, K, h, w)`.
    """
    probs = class_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_logits.sigmoid())


class MFuserHead(nn.Module):
    """Pixel decoder + text-query Mask2Former transformer decoder (the reference's `tqdmHead`).

    Args:
        in_channels: channels of each of the four input maps (strides 4, 8, 16, 32).
        text_dim: channels of the text embeddings.
        num_classes: K; also the number of queries (query k ↔ class k).
        hidden_dim: channels inside the head (feat_channels = out_channels in the reference).
        num_heads: attention heads everywhere.
        num_decoder_layers: transformer decoder layers; the head returns one more prediction than this.
        num_pixel_decoder_layers: pixel-decoder encoder layers.
        num_feature_levels: levels the decoder cycles through (1/32, 1/16, 1/8 for 3).
        num_points: deformable sampling points in the pixel decoder.
        decoder_ffn_dim: FFN hidden channels of the transformer decoder.
        pixel_decoder_ffn_dim: FFN hidden channels of the pixel decoder (2048: mmcv 1.x lets the deprecated
            `feedforward_channels=2048` override the config's `ffn_cfgs` 1024).
        dropout: dropout inside attention and FFNs (0 in the reference).
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        text_dim: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_decoder_layers: int = 9,
        num_pixel_decoder_layers: int = 6,
        num_feature_levels: int = 3,
        num_points: int = 4,
        decoder_ffn_dim: int = 2048,
        pixel_decoder_ffn_dim: int = 2048,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            msg = f"MFuserHead: num_classes={num_classes} must be positive"
            raise ConfigError(msg)
        if hidden_dim % 2:
            msg = f"MFuserHead: hidden_dim={hidden_dim} must be even (sine positions use hidden_dim / 2 per axis)"
            raise ConfigError(msg)
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.num_feature_levels = num_feature_levels
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels=[in_channels] * 4,
            text_dim=text_dim,
            num_text_embeds=num_classes,
            embed_dim=hidden_dim,
            num_heads=num_heads,
            num_layers=num_pixel_decoder_layers,
            num_levels=num_feature_levels,
            num_points=num_points,
            ffn_dim=pixel_decoder_ffn_dim,
            dropout=dropout,
            **dd,
        )
        self.pos_encoding = SinePositionEncoding(num_feats=hidden_dim // 2, normalize=True)
        # the reference's decoder_input_projs are identities (feat_channels == decoder width)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim, **dd)
        # query contents come from the text; query positions are learned
        self.text_proj = nn.Sequential(
            nn.Linear(text_dim, hidden_dim, **dd), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim, **dd)
        )
        self.query_embed = nn.Embedding(num_classes, hidden_dim, **dd)
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(
                embed_dim=hidden_dim, num_heads=num_heads, ffn_dim=decoder_ffn_dim, dropout=dropout, **dd
            )
            for _ in range(num_decoder_layers)
        )
        # the reference's transformer_decoder.post_norm, applied before every prediction
        self.decoder_norm = nn.LayerNorm(hidden_dim, **dd)
        self.cls_embed = nn.Linear(hidden_dim, num_classes + 1, **dd)
        self.mask_embed = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim, **dd),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim, **dd),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim, **dd),
        )
        # init: the reference never calls tqdmHead.init_weights(), so every layer keeps its constructor init
        # (PyTorch defaults; mmcv ConvModule / MSDeformAttn / MultiheadAttention init, reproduced in the layers)

    def _predict(self, query: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """Class and mask logits from `(B, Q, C)` queries and `(B, C, h, w)` mask features."""
        q = self.decoder_norm(query)
        mask = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), mask_features)
        return self.cls_embed(q), mask

    def forward(self, features: Sequence[Tensor], text: Tensor) -> HeadOutput:
        """Predict class and mask logits after every stage.

        Args:
            features: four maps `(B, in_channels, H/s, W/s)` for s = 4, 8, 16, 32.
            text: `(B, K, text_dim)` class text embeddings (after the text enhancer).

        Returns:
            `HeadOutput` with `num_decoder_layers + 1` class logits `(B, K, K+1)` and mask logits `(B, K, H/4, W/4)`.

        Raises:
            ValueError: wrong number of feature maps or of text embeddings.
        """
        mask_features, levels = self.pixel_decoder(features, text)
        memories, memory_pos, sizes = [], [], []
        for i, level in enumerate(levels):
            # level embedding goes on the content (keys and values); the sine position on the keys only
            memories.append(level.flatten(2).transpose(1, 2) + self.level_embed.weight[i].to(level.dtype))
            memory_pos.append(self.pos_encoding(level).flatten(2).transpose(1, 2))
            sizes.append(level.shape[-2:])

        query = self.text_proj(text)
        query_pos = self.query_embed.weight[None].to(query.dtype)
        cls, mask = self._predict(query, mask_features)
        class_logits, mask_logits = [cls], [mask]
        for i, layer in enumerate(self.layers):
            lvl = i % self.num_feature_levels
            bias = mask_attention_bias(mask, sizes[lvl])
            query = layer(query, query_pos, memories[lvl], memory_pos[lvl], bias)
            cls, mask = self._predict(query, mask_features)
            class_logits.append(cls)
            mask_logits.append(mask)
        return HeadOutput(class_logits, mask_logits)
