"""The public checkpoint layouts load strictly into the encoders MFuser itself builds (network.encoders / text)."""

from __future__ import annotations

import torch
from test_backbone_formats import assert_close, save
from tiny_backbones import (
    DEPTH,
    EMBED,
    HEADS,
    WIDTH,
    clip_text_cfg,
    eva_to_baai,
    hf_siglip_state,
    hf_siglip_vision_forward,
    images,
    tiny_dinov2,
    tiny_eva,
    tiny_openai_clip,
    tiny_text,
    token_ids,
)

from mfuser_model.network.encoders import EncoderSpec, build_vfm, build_vlm
from mfuser_model.network.text import build_text_tower
from mfuser_model.weights import load_dinov2, load_vlm


def spec(patch: int, img: int) -> EncoderSpec:
    return EncoderSpec(embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, patch_size=patch, img_size=img)


def text_tower(kind: str, vocab: int, context: int) -> torch.nn.Module:
    return build_text_tower(kind, width=WIDTH, heads=HEADS, layers=DEPTH, embed_dim=EMBED, vocab_size=vocab,
                            context_length=context)  # fmt: skip


def test_meta_dinov2_loads_into_build_vfm(tmp_path):
    src = tiny_dinov2(seed=20)
    path = save(dict(src.state_dict(), mask_token=torch.randn(1, WIDTH)), tmp_path / "dinov2_vitl14_pretrain.pth")
    vfm = build_vfm(spec(14, 28)).eval()

    load_dinov2(vfm, path)

    x = images(28, seed=20)
    with torch.no_grad():
        assert_close(vfm.forward_features(x), src.forward_features(x))


def test_openai_clip_loads_into_build_vlm_and_build_text_tower(tmp_path):
    src = tiny_openai_clip(seed=21)
    path = save(src.state_dict(), tmp_path / "ViT-L-14-336px.pt")
    vision, text = build_vlm("clip", spec(14, 28), text_dim=EMBED).eval(), text_tower("clip", 50, 7).eval()

    load_vlm("clip", vision, text, path)

    x, ids = images(28, seed=21), token_ids(7, 50, seed=21)
    with torch.no_grad():
        assert_close(vision(x), src.encode_image(x))
        assert_close(text(ids), src.encode_text(ids))


def test_baai_eva02_loads_into_build_vlm_and_build_text_tower(tmp_path):
    src_vision, src_text = tiny_eva(seed=22), tiny_text(clip_text_cfg(), quick_gelu=False, seed=23)
    path = save(eva_to_baai(src_vision.state_dict(), src_text.state_dict(), grid=2), tmp_path / "eva.pt")
    vision, text = build_vlm("eva02", spec(14, 28), text_dim=EMBED).eval(), text_tower("eva02", 50, 7).eval()

    load_vlm("eva02", vision, text, path)

    x, ids = images(28, seed=22), token_ids(7, 50, seed=22)
    with torch.no_grad():
        assert_close(vision(x), src_vision(x))
        assert_close(text(ids), src_text(ids))


def test_hf_siglip_loads_into_build_vlm_and_build_text_tower(tmp_path):
    state = hf_siglip_state(seed=24)
    path = save(state, tmp_path / "model.safetensors")
    vision, text = build_vlm("siglip", spec(16, 32), text_dim=EMBED).eval(), text_tower("siglip", 40, 8).eval()

    result = load_vlm("siglip", vision, text, path)

    x = images(32, seed=24)
    want_tokens, want_pooled = hf_siglip_vision_forward(state, x)
    with torch.no_grad():
        assert_close(vision.forward_features(x), want_tokens)
        assert_close(vision(x), want_pooled)
    assert result.text is not None and not result.text.missing
