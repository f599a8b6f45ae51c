"""The frozen image encoders of MFuser, built from timm, and a uniform block-by-block interface to them.

MFuser runs a vision foundation model (DINOv2) and a vision-language model (EVA02-CLIP, CLIP or SigLIP) in
lock-step, one transformer block at a time, so the fusers can edit both token streams between blocks.
timm's ``forward_features`` runs all blocks at once, so :class:`TokenStream` exposes the three pieces the fusion
loop needs (embed, one block, final norm) on top of the unmodified timm modules. Nothing is vendored.

Every encoder is built with ``dynamic_img_size=True``: position embeddings (and EVA's RoPE) are resampled to the
input's token grid, so whole-image inference works at any size and sliding windows at the training size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mfuser_model.preprocess import CLIP_MEAN, CLIP_STD

__all__ = [
    "EncoderSpec",
    "TokenStream",
    "VLMKind",
    "build_vfm",
    "build_vlm",
    "renormalize",
]

VLMKind = Literal["eva02", "clip", "siglip"]

# The data pipeline normalises with OpenAI-CLIP statistics (mfuser_model.preprocess, as the reference does);
# encoders trained with other statistics re-normalise from there.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class EncoderSpec:
    """The numbers of one ViT: the full-size encoders are ViT-L (1024 wide, 24 deep, 16 heads)."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int  # size the position embeddings are stored for; other sizes are resampled on the fly


def renormalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Map CLIP-normalised (B, 3, H, W) images to another normalisation without going through [0, 1]."""
    clip_mean = images.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    clip_std = images.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    new_mean = images.new_tensor(mean).view(1, 3, 1, 1)
    new_std = images.new_tensor(std).view(1, 3, 1, 1)
    return (images * clip_std + clip_mean - new_mean) / new_std


def build_vfm(spec: EncoderSpec, device=None, dtype=None) -> VisionTransformer:  # noqa: ANN001
    """DINOv2 as timm's ``vit_large_patch14_dinov2`` builds it (LayerScale 1e-5, CLS token, no head)."""
    return VisionTransformer(
        img_size=spec.img_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth,
        num_heads=spec.num_heads, mlp_ratio=4.0, qkv_bias=True, init_values=1e-5, num_classes=0,
        class_token=True, global_pool="token", dynamic_img_size=True, device=device, dtype=dtype,
    )


def build_vlm(kind: VLMKind, spec: EncoderSpec, text_dim: int, drop_path_rate: float = 0.0,
              device=None, dtype=None) -> nn.Module:  # noqa: ANN001
    """The VLM image tower as timm builds it, with its projection into the joint text space as ``head``.

    - ``eva02``: timm ``eva02_large_patch14_clip_336`` (SwiGLU, sub-LN, RoPE), head Linear D -> text_dim.
    - ``clip``: timm ``vit_large_patch14_clip_quickgelu_336`` (pre-norm, QuickGELU), head = OpenAI's ``proj``.
    - ``siglip``: timm ``vit_large_patch16_siglip_384`` (no CLS token, attention-pool head, no projection).
    """
    dd = {"device": device, "dtype": dtype}
    if kind == "eva02":
        return Eva(
            img_size=spec.img_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth,
            num_heads=spec.num_heads, mlp_ratio=4 * 2 / 3, qkv_fused=False, swiglu_mlp=True, scale_mlp=True,
            scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(16, 16), num_classes=text_dim,
            global_pool="token", dynamic_img_size=True, drop_path_rate=drop_path_rate, **dd,
        )
    if kind == "clip":
        return VisionTransformer(
            img_size=spec.img_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth,
            num_heads=spec.num_heads, pre_norm=True, norm_layer=partial(nn.LayerNorm, eps=1e-5),
            act_layer="quick_gelu", num_classes=text_dim, global_pool="token", dynamic_img_size=True,
            drop_path_rate=drop_path_rate, **dd,
        )
    if kind == "siglip":
        return VisionTransformer(
            img_size=spec.img_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth,
            num_heads=spec.num_heads, class_token=False, global_pool="map", num_classes=0,
            act_layer="gelu_tanh", dynamic_img_size=True, drop_path_rate=drop_path_rate, **dd,
        )
    msg = f"unknown VLM kind {kind!r}; expected one of 'eva02', 'clip', 'siglip'"
    raise ValueError(msg)


class TokenStream:
    """Block-by-block access to a timm ViT or EVA model (a view; it owns no parameters).

    ``embed`` returns the token sequence (B, N, D) after patch and position embedding, and the grid (h, w);
    ``block(i, x)`` applies block i (with EVA's RoPE for the current grid); ``norm`` is the final norm.
    """

    def __init__(self, model: nn.Module, double_class_embedding: bool = False) -> None:
        self.model = model
        self.is_eva = isinstance(model, Eva)
        # The reference CLIP tower adds its class embedding twice (once as the token, once into pos[0]);
        # trained MFuser-CLIP weights expect that input, so the CLIP stream reproduces it.
        self.double_class_embedding = double_class_embedding
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self._rope: torch.Tensor | None = None

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.model.blocks)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """images (B, 3, H, W) -> tokens (B, prefix + h*w, D) and the grid (h, w).

        Pixels past the last whole patch are dropped, as the reference's stride-p patch conv does (a 512 crop
        at patch 14 gives a 36x36 grid); timm would otherwise refuse sizes that are not a multiple of p.
        """
        p = self.model.patch_embed.patch_size
        images = images[..., : images.shape[-2] // p[0] * p[0], : images.shape[-1] // p[1] * p[1]]
        x = self.model.patch_embed(images)  # (B, h, w, D) because dynamic_img_size=True
        grid = (int(x.shape[1]), int(x.shape[2]))
        if self.is_eva:
            x, self._rope = self.model._pos_embed(x)
        else:
            x = self.model._pos_embed(x)
            if self.double_class_embedding:
                x = torch.cat([x[:, :1] + self.model.cls_token, x[:, 1:]], dim=1)
            x = self.model.patch_drop(x)
        x = self.model.norm_pre(x)
        return x, grid

    def block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Apply transformer block ``index`` to (B, N, D) tokens."""
        blk = self.model.blocks[index]
        if self.is_eva:
            return blk(x, rope=self._rope)
        return blk(x)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's final norm (``ln_post`` for CLIP, ``post_layernorm`` for SigLIP)."""
        return self.model.norm(x)
