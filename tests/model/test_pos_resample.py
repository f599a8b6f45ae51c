"""Position tables at token grids other than the stored one are resampled as the reference's forward passes do.

Each reference below is written out from the reference code (MFuser at cd8ef8541c0c), independently of
``mfuser_model.network.encoders``: DINOv2's ``interpolate_pos_encoding`` (``models/backbones/dino_v2.py``), CLIP's
``CLIPVisionTransformer.forward`` (``models/backbones/clip/models.py``), Hugging Face SigLIP's
``interpolate_pos_encoding`` (``models/backbones/siglip/modeling_siglip.py``) and EVA-CLIP's bicubic resize.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mfuser_model.network.encoders import EncoderSpec, TokenStream, build_vfm, build_vlm

SPEC = EncoderSpec(embed_dim=16, depth=1, num_heads=2, patch_size=16, img_size=128)  # 8 x 8 stored grid
EVA_SPEC = EncoderSpec(embed_dim=16, depth=1, num_heads=2, patch_size=14, img_size=126)  # 9 x 9
# (H, W) in pixels: the stored size, up, down, non-square, not a multiple of the patch, and an 8x8 grid from a
# non-square input (DINOv2 keeps its table only for square inputs).
SIZES = [(128, 128), (192, 320), (64, 64), (128, 176), (150, 100), (128, 136)]


def ref_dinov2(pos_embed: torch.Tensor, w: int, h: int, npatch: int, patch_size: int) -> torch.Tensor:
    """``DinoVisionTransformer.interpolate_pos_encoding(x, w, h)``; w, h = x.shape[2], x.shape[3] of the image."""
    previous_dtype = pos_embed.dtype
    n = pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)


def ref_clip(positional_embedding: torch.Tensor, class_embedding: torch.Tensor, spatial_size: tuple[int, int],
             hw: tuple[int, int]) -> torch.Tensor:
    """The position rows ``CLIPVisionTransformer.forward`` adds, the class embedding folded into the CLS row."""
    c = positional_embedding.shape[-1]
    cls_pos = positional_embedding[0, :] + class_embedding
    spatial_pos = F.interpolate(positional_embedding[1:,].reshape(1, *spatial_size, c).permute(0, 3, 1, 2),
                                size=hw, mode="bilinear")
    spatial_pos = spatial_pos.reshape(1, c, hw[0] * hw[1]).permute(0, 2, 1)
    return torch.cat([cls_pos.reshape(1, 1, c), spatial_pos], dim=1)


def ref_siglip(weight: torch.Tensor, num_patches: int, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Hugging Face ``SiglipVisionEmbeddings.interpolate_pos_encoding`` (``weight`` = position_embedding.weight)."""
    num_positions = weight.shape[0]
    if num_patches == num_positions and height == width:
        return weight.unsqueeze(0)
    dim = weight.shape[-1]
    side = int(num_positions**0.5)
    patch_pos_embed = weight.unsqueeze(0).reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch_pos_embed = nn.functional.interpolate(patch_pos_embed, size=(height // patch_size, width // patch_size),
                                                mode="bicubic", align_corners=False)
    return patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)


def ref_eva(pos_embed: torch.Tensor, stored: int, grid: tuple[int, int]) -> torch.Tensor:
    """EVA-CLIP's ``resize_evaclip_pos_embed`` rule (bicubic, CLS row kept), applied for the input's grid."""
    if grid == (stored, stored):
        return pos_embed
    dim = pos_embed.shape[-1]
    tokens = pos_embed[:, 1:].reshape(1, stored, stored, dim).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1], tokens.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def _randomize_pos(model: nn.Module) -> None:
    # Smooth-ish random tables, as trained ones are: resampling differences are then of a realistic size.
    with torch.no_grad():
        model.pos_embed.normal_(generator=torch.Generator().manual_seed(0))


def _patch_tokens(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    p = model.patch_embed.patch_size[0]
    cropped = images[..., : images.shape[-2] // p * p, : images.shape[-1] // p * p]
    return model.patch_embed.proj(cropped).flatten(2).transpose(1, 2)  # (B, h*w, D)


def _images(size: tuple[int, int]) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("size", SIZES)
def test_dinov2_tokens_use_the_reference_resampling_with_the_offset(size):
    torch.manual_seed(0)
    model = build_vfm(SPEC).eval()
    _randomize_pos(model)
    images = _images(size)
    tokens, grid = TokenStream(model, pos_resample="dinov2").embed(images)
    x = _patch_tokens(model, images)
    x = torch.cat([model.cls_token.expand(2, -1, -1), x], dim=1)
    expected = x + ref_dinov2(model.pos_embed, size[0], size[1], x.shape[1] - 1, 16)
    assert grid == (size[0] // 16, size[1] // 16)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", SIZES)
def test_clip_tokens_use_bilinear_resampling(size):
    torch.manual_seed(0)
    model = build_vlm("clip", SPEC, text_dim=8).eval()
    _randomize_pos(model)
    images = _images(size)
    tokens, _ = TokenStream(model, double_class_embedding=True, pos_resample="bilinear").embed(images)
    x = _patch_tokens(model, images)
    x = torch.cat([model.cls_token.expand(2, -1, -1), x], dim=1)
    grid = (size[0] // 16, size[1] // 16)
    pos = ref_clip(model.pos_embed[0], model.cls_token[0, 0], (8, 8), grid)
    torch.testing.assert_close(tokens, model.norm_pre(x + pos), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", SIZES)
def test_siglip_tokens_use_hugging_face_bicubic_resampling(size):
    torch.manual_seed(0)
    model = build_vlm("siglip", SPEC, text_dim=16).eval()
    _randomize_pos(model)
    images = _images(size)
    tokens, _ = TokenStream(model, pos_resample="bicubic").embed(images)
    x = _patch_tokens(model, images)
    expected = x + ref_siglip(model.pos_embed[0], x.shape[1], size[0], size[1], 16)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(126, 126), (200, 150), (70, 70)])
def test_eva02_tokens_use_bicubic_resampling_without_antialias(size):
    torch.manual_seed(0)
    model = build_vlm("eva02", EVA_SPEC, text_dim=8).eval()
    _randomize_pos(model)
    images = _images(size)
    stream = TokenStream(model, pos_resample="bicubic")
    tokens, grid = stream.embed(images)
    x = torch.cat([model.cls_token.expand(2, -1, -1), _patch_tokens(model, images)], dim=1)
    torch.testing.assert_close(tokens, x + ref_eva(model.pos_embed, 9, grid), rtol=0, atol=1e-6)
    # RoPE stays timm's, for the input's grid.
    torch.testing.assert_close(stream._rope, model.rope.get_embed(shape=grid), rtol=0, atol=0)


def test_the_stored_grid_adds_the_stored_table_unchanged():
    torch.manual_seed(0)
    for rule, model in (("dinov2", build_vfm(SPEC)), ("bilinear", build_vlm("clip", SPEC, text_dim=8)),
                        ("bicubic", build_vlm("siglip", SPEC, text_dim=16))):
        model.eval()
        _randomize_pos(model)
        images = _images((128, 128))
        tokens, _ = TokenStream(model, pos_resample=rule).embed(images)
        x = _patch_tokens(model, images)
        if model.cls_token is not None:
            x = torch.cat([model.cls_token.expand(2, -1, -1), x], dim=1)
        torch.testing.assert_close(tokens, model.norm_pre(x + model.pos_embed), rtol=0, atol=0, msg=rule)
