"""The frozen image encoders of MFuser, built from timm, and a uniform block-by-block interface to them.

MFuser runs a vision foundation model (DINOv2) and a vision-language model (EVA02-CLIP, CLIP or SigLIP) in
lock-step, one transformer block at a time, so the fusers can edit both token streams between blocks.
timm's ``forward_features`` runs all blocks at once, so :class:`TokenStream` exposes the three pieces the fusion
loop needs (embed, one block, final norm) on top of the unmodified timm modules. Nothing is vendored.

Every encoder is built with ``dynamic_img_size=True``, so any input size runs. At the stored grid (the training
crop) the position table is used as stored; at other grids (whole-image inference, windows of images smaller than
the crop) it is resampled the way the reference's forward pass does, not timm's way (bicubic with antialiasing),
because MFuser checkpoints were trained and evaluated with the reference's tables (:func:`resample_grid_pos_embed`):

- DINOv2: the reference's ``DinoVisionTransformer.interpolate_pos_encoding`` (Meta's, with the default
  ``interpolate_offset=0.1``, no antialias): bicubic with scale factor ``(h + 0.1) / sqrt(N)``; the table as stored
  when the grid has N cells and the input is square.
- CLIP: ``CLIPVisionTransformer.forward``: bilinear to the grid, the CLS row kept.
- EVA02, SigLIP: the reference runs them only at the stored size (EVA's patch embedding asserts it; SigLIP's forward
  adds the stored table). Other sizes use their own code's resampler: bicubic to the grid without antialias
  (EVA-CLIP's ``resize_evaclip_pos_embed``, Hugging Face SigLIP's ``interpolate_pos_encoding``). EVA's RoPE is
  timm's, recomputed for the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mfuser_model.preprocess import CLIP_MEAN, CLIP_STD

__all__ = [
    "EncoderSpec",
    "PosResample",
    "TokenStream",
    "VLMKind",
    "build_vfm",
    "build_vlm",
    "renormalize",
    "resample_grid_pos_embed",
]

VLMKind = Literal["eva02", "clip", "siglip"]
PosResample = Literal["dinov2", "bilinear", "bicubic"]
# The reference's rule per encoder (see the module docstring).
POS_RESAMPLE: dict[str, PosResample] = {"dinov2": "dinov2", "clip": "bilinear", "eva02": "bicubic",
                                        "siglip": "bicubic"}

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


def resample_grid_pos_embed(grid_pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                            image_size: tuple[int, int], rule: PosResample) -> torch.Tensor:
    """The grid rows ``(1, h*w, C)`` of a position table (prefix rows removed) for a ``new_grid`` token grid.

    Args:
        grid_pos: the stored rows, ``old_grid`` in row-major order.
        old_grid, new_grid: ``(h, w)`` token grids.
        image_size: ``(H, W)`` of the input in pixels (DINOv2's rule keeps its table only for square inputs).
        rule: ``"dinov2"``, ``"bilinear"`` or ``"bicubic"`` (module docstring).

    Returns:
        ``(1, H'*W', C)`` in the table's dtype (resampled in float32, as every reference does).
    """
    n = grid_pos.shape[1]
    if rule == "dinov2":
        if new_grid[0] * new_grid[1] == n and image_size[0] == image_size[1]:
            return grid_pos
    elif tuple(new_grid) == tuple(old_grid):
        return grid_pos  # bilinear and bicubic at scale 1 return the table itself
    dim = grid_pos.shape[-1]
    maps = grid_pos.float().reshape(1, *old_grid, dim).permute(0, 3, 1, 2)
    if rule == "dinov2":
        # The +0.1 keeps floor(side * scale) at the target grid despite float error (facebookresearch/dino#8);
        # the scale itself, not the size, sets where the bicubic taps fall.
        side = math.sqrt(n)
        scale = ((new_grid[0] + 0.1) / side, (new_grid[1] + 0.1) / side)
        maps = F.interpolate(maps, scale_factor=scale, mode="bicubic", align_corners=False)
        if tuple(maps.shape[-2:]) != tuple(new_grid):
            msg = f"DINOv2 position resampling gave a {tuple(maps.shape[-2:])} grid, expected {tuple(new_grid)}"
            raise ValueError(msg)
    else:
        maps = F.interpolate(maps, size=tuple(new_grid), mode=rule, align_corners=False)
    return maps.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(grid_pos.dtype)


class TokenStream:
    """Block-by-block access to a timm ViT or EVA model (a view; it owns no parameters).

    ``embed`` returns the token sequence (B, N, D) after patch and position embedding, and the grid (h, w);
    ``block(i, x)`` applies block i (with EVA's RoPE for the current grid); ``norm`` is the final norm.
    """

    def __init__(self, model: nn.Module, double_class_embedding: bool = False,
                 pos_resample: PosResample = "bicubic") -> None:
        self.model = model
        self.is_eva = isinstance(model, Eva)
        self.pos_resample = pos_resample
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
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        p = self.model.patch_embed.patch_size
        images = images[..., : images.shape[-2] // p[0] * p[0], : images.shape[-1] // p[1] * p[1]]
        x = self.model.patch_embed(images)  # (B, h, w, D) because dynamic_img_size=True
        grid = (int(x.shape[1]), int(x.shape[2]))
        x = self._pos_embed(x, image_size)
        if self.is_eva:
            self._rope = self.model.rope.get_embed(shape=grid) if self.model.rope is not None else None
        else:
            if self.double_class_embedding:
                x = torch.cat([x[:, :1] + self.model.cls_token, x[:, 1:]], dim=1)
            x = self.model.patch_drop(x)
        x = self.model.norm_pre(x)
        return x, grid

    def _pos_embed(self, x: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """timm's ``_pos_embed`` (prefix tokens, position table, dropout) with the table resampled by
        :func:`resample_grid_pos_embed` instead of timm's antialiased bicubic."""
        model = self.model
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        prefix = [t.expand(b, -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
        if model.pos_embed is None:
            return model.pos_drop(torch.cat([*prefix, x], dim=1))
        rows = 0 if model.no_embed_class else model.num_prefix_tokens
        table = model.pos_embed
        grid_pos = resample_grid_pos_embed(table[:, rows:], tuple(model.patch_embed.grid_size), (h, w), image_size,
                                           self.pos_resample)
        pos = torch.cat([table[:, :rows], grid_pos], dim=1) if rows else grid_pos
        if model.no_embed_class:  # deit-3 / big_vision layout: the table has no prefix rows
            return model.pos_drop(torch.cat([*prefix, x + pos], dim=1))
        return model.pos_drop(torch.cat([*prefix, x], dim=1) + pos)

    def block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Apply transformer block ``index`` to (B, N, D) tokens."""
        blk = self.model.blocks[index]
        if self.is_eva:
            return blk(x, rope=self._rope)
        return blk(x)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's final norm (``ln_post`` for CLIP, ``post_layernorm`` for SigLIP)."""
        return self.model.norm(x)
