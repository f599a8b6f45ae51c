"""The fused dual encoder: DINOv2 and a VLM in lock-step with one MVFuser after every block.

After block i of both encoders, ``MVFuser_i`` reads ``[VFM tokens; VLM tokens]`` (VFM first, CLS tokens
included where the model has them) and its offsets are split by position and added back into each stream.
The CLIP variant projects the VFM tokens into the fuser (``adapter_proj1``) and the VFM offsets back
(``adapter_proj2``), and adds projected final DINOv2 tokens to the CLIP tokens (``adapter_proj3``).
The features after ``out_indices`` blocks of both streams are concatenated to 2D channels and turned into a
ViTDet-style simple pyramid (strides 4, 8, 16, 32 of the patch grid) for the decode head.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mfuser_model.network.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    POS_RESAMPLE,
    SIGLIP_MEAN,
    SIGLIP_STD,
    EncoderSpec,
    TokenStream,
    VLMKind,
    build_vfm,
    build_vlm,
    renormalize,
)
from mfuser_model.network.mvfuser import MVFuser

__all__ = ["BackboneOutput", "FusedBackbone", "SimplePyramid"]


class BackboneOutput(NamedTuple):
    """Pyramid features and the visual embeddings in the joint text space."""

    features: list[torch.Tensor]  # 4 maps (B, 2D, h*4/s, w*4/s), strides 4/8/16/32 relative to 4x the grid
    global_embedding: torch.Tensor  # (B, text_dim)
    dense_embedding: torch.Tensor  # (B, text_dim, h, w)


class SimplePyramid(nn.Module):
    """ViTDet simple feature pyramid on a single-scale map: ×4, ×2, ×1, ×½."""

    def __init__(self, channels: int, device=None, dtype=None) -> None:  # noqa: ANN001
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 2, stride=2, **dd),
            nn.BatchNorm2d(channels, **dd),  # SyncBatchNorm under DDP (training converts it)
            nn.GELU(),
            nn.ConvTranspose2d(channels, channels, 2, stride=2, **dd),
        )
        self.fpn2 = nn.ConvTranspose2d(channels, channels, 2, stride=2, **dd)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Four same-size maps (one per tapped block) -> strides ×4, ×2, ×1, ×½ of them."""
        return [self.fpn1(maps[0]), self.fpn2(maps[1]), self.fpn3(maps[2]), self.fpn4(maps[3])]


class FusedBackbone(nn.Module):
    """Frozen DINOv2 + frozen VLM image tower, fused block by block by trainable MVFusers.

    Args:
        vlm_kind: ``"eva02"``, ``"clip"`` or ``"siglip"``.
        vfm_spec, vlm_spec: the two encoders' numbers (same depth; widths may differ only for CLIP).
        text_dim: the joint image-text width (768 for CLIP/EVA02, 1024 for SigLIP).
        out_indices: the blocks whose outputs feed the pyramid (0-based; the reference uses 7, 11, 15, 23).
        d_state: MVFuser SSM state size.
        vlm_drop_path: stochastic depth of the VLM tower (0.1 for CLIP in the reference, active in training).
        grad_checkpointing: recompute each block pair in backward instead of storing activations.
    """

    def __init__(
            self,
            *,
            vlm_kind: VLMKind,
            vfm_spec: EncoderSpec,
            vlm_spec: EncoderSpec,
            text_dim: int,
            out_indices: tuple[int, ...] = (7, 11, 15, 23),
            d_state: int = 16,
            vlm_drop_path: float = 0.0,
            grad_checkpointing: bool = False,
            scan_backend: str | None = None,
            device=None,  # noqa: ANN001
            dtype=None,  # noqa: ANN001
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if vfm_spec.depth != vlm_spec.depth:
            msg = f"the two encoders must have the same depth, got VFM {vfm_spec.depth} and VLM {vlm_spec.depth}"
            raise ValueError(msg)
        if len(out_indices) != 4 or not all(0 <= i < vfm_spec.depth for i in out_indices):
            msg = f"out_indices must be 4 block indices below depth {vfm_spec.depth}, got {list(out_indices)}"
            raise ValueError(msg)
        if vlm_kind != "clip" and vfm_spec.embed_dim != vlm_spec.embed_dim:
            msg = f"{vlm_kind}: VFM and VLM widths must match ({vfm_spec.embed_dim} != {vlm_spec.embed_dim})"
            raise ValueError(msg)
        self.vlm_kind = vlm_kind
        self.out_indices = tuple(out_indices)
        self.grad_checkpointing = grad_checkpointing
        dim = vlm_spec.embed_dim

        self.vfm = build_vfm(vfm_spec, **dd)
        self.vlm = build_vlm(vlm_kind, vlm_spec, text_dim, drop_path_rate=vlm_drop_path, **dd)
        self.fusers = nn.ModuleList(
            MVFuser(dim, d_state=d_state, scan_backend=scan_backend, **dd) for _ in range(vfm_spec.depth))
        if vlm_kind == "clip":
            self.adapter_proj1 = nn.ModuleList(nn.Linear(vfm_spec.embed_dim, dim, **dd) for _ in self.fusers)
            self.adapter_proj2 = nn.ModuleList(nn.Linear(dim, vfm_spec.embed_dim, **dd) for _ in self.fusers)
            self.adapter_proj3 = nn.Linear(vfm_spec.embed_dim, dim, **dd)
        self.pyramid = SimplePyramid(vfm_spec.embed_dim + dim, **dd)
        # Block-by-block views of the two encoders (plain objects: they hold no parameters of their own).
        self._vfm = TokenStream(self.vfm, pos_resample=POS_RESAMPLE["dinov2"])
        self._vlm = TokenStream(self.vlm, double_class_embedding=vlm_kind == "clip",
                                pos_resample=POS_RESAMPLE[vlm_kind])

    def _fuse(self, index: int, v: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self._vfm.block(index, v)
        t = self._vlm.block(index, t)
        v_in = self.adapter_proj1[index](v) if self.vlm_kind == "clip" else v
        offsets = self.fusers[index](torch.cat([v_in, t], dim=1))
        dv, dt = offsets[:, : v.shape[1]], offsets[:, v.shape[1]:]
        if self.vlm_kind == "clip":
            dv = self.adapter_proj2[index](dv)
        return v + dv, t + dt

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        """images: (B, 3, H, W), CLIP-normalised."""
        v, grid = self._vfm.embed(renormalize(images, IMAGENET_MEAN, IMAGENET_STD))
        vlm_in = renormalize(images, SIGLIP_MEAN, SIGLIP_STD) if self.vlm_kind == "siglip" else images
        t, vlm_grid = self._vlm.embed(vlm_in)
        if grid != vlm_grid:
            msg = f"token grids differ: VFM {grid}, VLM {vlm_grid}; the two encoders need the same patch size"
            raise ValueError(msg)
        taps: list[torch.Tensor] = []
        for index in range(self._vfm.depth):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                v, t = checkpoint(self._fuse, index, v, t, use_reentrant=False)
            else:
                v, t = self._fuse(index, v, t)
            if index in self.out_indices:
                taps.append(self._to_map(v, t, grid))
        features = self.pyramid(taps)
        global_embedding, dense = self._visual_embeddings(v, t, grid)
        return BackboneOutput(features, global_embedding, dense)

    def _to_map(self, v: torch.Tensor, t: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Drop prefix tokens, reshape both streams to maps and concatenate channels: (B, Dv + Dt, h, w)."""
        vp = v[:, self._vfm.num_prefix_tokens:]
        tp = t[:, self._vlm.num_prefix_tokens:]
        both = torch.cat([vp, tp], dim=-1)
        return both.transpose(1, 2).reshape(both.shape[0], both.shape[2], *grid)

    def _visual_embeddings(self, v: torch.Tensor, t: torch.Tensor,
                           grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Global (B, C) and dense (B, C, h, w) embeddings in the joint text space, as the reference makes them."""
        vfm_norm = self.vfm.norm
        if self.vlm_kind == "eva02":
            x = self.vlm.head(self.vlm.norm(t) + vfm_norm(v))
            glob, dense = x[:, 0], x[:, 1:]
        elif self.vlm_kind == "clip":
            x = self.vlm.head(self.vlm.norm(t + self.adapter_proj3(v)))
            glob, dense = x[:, 0], x[:, 1:]
        else:  # siglip: no CLS token; the attention-pool head gives the global embedding
            x = self.vlm.norm(t) + vfm_norm(v[:, self._vfm.num_prefix_tokens:])
            glob = self.vlm.attn_pool(x)
            dense = _attention_pool_dense(self.vlm.attn_pool, x)
        b, _, c = dense.shape
        return glob, dense.transpose(1, 2).reshape(b, c, *grid)


def _attention_pool_dense(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SigLIP's attention-pool head applied token to token: every token queries all tokens (B, N, C).

    The reference applies the pooling head's MHA with the tokens themselves as queries to get a dense map;
    this uses the same weights (q, kv, proj, norm, mlp) of timm's ``AttentionPoolLatent``.
    """
    b, n, c = x.shape
    heads = pool.num_heads
    q = pool.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
    k, v = pool.kv(x).reshape(b, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = pool.q_norm(q), pool.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
    out = pool.proj(out)
    if pool.mlp is not None:
        out = out + pool.mlp(pool.norm(out))
    return out
