"""Every public backbone layout loads into the project's timm / open_clip modules with the source's own features.

Each test writes a tiny random model in the source's real key names and tensor layouts, saves it the way the
public file is saved, loads it through mfuser_model.weights and compares forwards (max abs diff <= 1e-5). The HF
layouts are checked against forwards written from the HF state dict alone (tiny_backbones.hf_*_forward).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny_backbones import (
    DEPTH,
    WIDTH,
    clip_text_cfg,
    eva_to_baai,
    hf_dinov2_forward,
    hf_dinov2_state,
    hf_siglip_state,
    hf_siglip_text_forward,
    hf_siglip_vision_forward,
    images,
    tiny_clip_vision,
    tiny_dinov2,
    tiny_eva,
    tiny_openai_clip,
    tiny_siglip_text,
    tiny_siglip_vision,
    tiny_text,
    token_ids,
)

from mfuser_model.errors import CheckpointError
from mfuser_model.weights import (
    convert_vlm,
    detect_dinov2_format,
    detect_vlm_format,
    load_dinov2,
    load_vlm,
    read_state_dict,
)

ATOL = 1e-5


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({k: v.detach().clone() for k, v in state.items()}, path)
    return path


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert expected.abs().max() > 0.1, "reference output is too small to tell a wrong mapping apart"
    assert (actual - expected).abs().max().item() <= ATOL


def reference_resize(pos: torch.Tensor, new: int, prefix: int, mode: str) -> torch.Tensor:
    """The reference code's pos-embed resize (clip/models.py, eva_clip/utils.py, siglip), written out again."""
    extra, tokens = pos[:, :prefix], pos[:, prefix:]
    orig = int(tokens.shape[1] ** 0.5)
    tokens = tokens.reshape(-1, orig, orig, pos.shape[-1]).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(new, new), mode=mode, align_corners=False)
    return torch.cat([extra, tokens.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


# ---------------------------------------------------------------------------------------------------- DINOv2


def test_meta_dinov2_pth_loads_into_timm_vit_with_identical_features(tmp_path):
    src = tiny_dinov2(seed=1)
    state = dict(src.state_dict(), mask_token=torch.randn(1, WIDTH))  # Meta keeps the iBOT mask token
    path = save(state, tmp_path / "dinov2_vitl14_pretrain.pth")
    assert detect_dinov2_format(read_state_dict(path)) == "dinov2-meta"

    dst = tiny_dinov2()
    report = load_dinov2(dst, path)

    assert not report.missing and not report.unexpected
    x = images(28)
    with torch.no_grad():
        assert_close(dst.forward_features(x), src.forward_features(x))


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_timm_dinov2_files_pass_through(tmp_path, name):
    src = tiny_dinov2(seed=2)
    path = save(src.state_dict(), tmp_path / name)

    dst = tiny_dinov2()
    load_dinov2(dst, path)

    x = images(28, seed=1)
    with torch.no_grad():
        assert_close(dst.forward_features(x), src.forward_features(x))


def test_hf_dinov2_safetensors_match_the_hf_forward(tmp_path):
    state = hf_dinov2_state(seed=3)
    path = save(state, tmp_path / "model.safetensors")
    assert detect_dinov2_format(read_state_dict(path)) == "dinov2-hf"

    dst = tiny_dinov2()
    load_dinov2(dst, path)

    x = images(28, seed=2)
    with torch.no_grad():
        assert_close(dst.forward_features(x), hf_dinov2_forward(state, x))


def test_dinov2_is_resized_like_the_reference_for_a_p16_pairing(tmp_path):
    # 4x4 grid of 14-px patches -> 3x3 grid of 16-px patches (the real case is 37x37/14 -> 32x32/16).
    src = tiny_dinov2(img_size=56, seed=4)
    path = save(dict(src.state_dict(), mask_token=torch.zeros(1, WIDTH)), tmp_path / "dinov2.pth")

    dst = tiny_dinov2(img_size=48, patch_size=16)
    load_dinov2(dst, path)

    expected_pos = reference_resize(src.pos_embed.detach(), 3, prefix=1, mode="bicubic")
    expected_kernel = F.interpolate(src.patch_embed.proj.weight.detach(), size=(16, 16), mode="bicubic",
                                    align_corners=False)  # fmt: skip
    torch.testing.assert_close(dst.pos_embed.detach(), expected_pos, rtol=0, atol=1e-6)
    torch.testing.assert_close(dst.patch_embed.proj.weight.detach(), expected_kernel, rtol=0, atol=1e-6)
    torch.testing.assert_close(dst.pos_embed[:, 0], src.pos_embed[:, 0], rtol=0, atol=0)  # CLS row kept
    torch.testing.assert_close(dst.blocks[1].ls2.gamma, src.blocks[1].ls2.gamma, rtol=0, atol=0)


def test_dinov2_with_a_wrong_shape_names_file_key_and_shapes(tmp_path):
    state = tiny_dinov2(seed=5).state_dict()
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(64, WIDTH)
    path = save(state, tmp_path / "broken_dinov2.pth")

    with pytest.raises(CheckpointError, match=r"broken_dinov2\.pth.*blocks\.1\.mlp\.fc1\.weight: expected \(128, 32\), "
                       r"found \(64, 32\)"):  # fmt: skip
        load_dinov2(tiny_dinov2(), path)


# ---------------------------------------------------------------------------------------------------- CLIP


def trace_to_torchscript(model: torch.nn.Module, path: Path) -> Path:
    """Save like OpenAI's ViT-L-14-336px.pt: a traced CLIP with a hyper-parameter stored as a tensor."""
    model.register_buffer("input_resolution", torch.tensor(28))  # OpenAI's file has it; open_clip's CLIP does not
    example = (images(28, batch=1), token_ids(7, 50, batch=1))
    traced = torch.jit.trace(model, example, check_trace=False)
    torch.jit.save(traced, str(path))
    return path


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("fmt", ["torchscript", "open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_openai_clip_loads_into_timm_vision_and_open_clip_text(tmp_path, fmt):
    src = tiny_openai_clip(seed=6)
    x, ids = images(28, seed=3), token_ids(7, 50, seed=3)
    with torch.no_grad():
        want_image, want_text = src.encode_image(x), src.encode_text(ids)
    if fmt == "torchscript":
        path = trace_to_torchscript(src, tmp_path / "ViT-L-14-336px.pt")
    else:
        path = save(src.state_dict(), tmp_path / fmt)

    vision, text = tiny_clip_vision(), tiny_text(clip_text_cfg(), quick_gelu=True)
    result = load_vlm("clip", vision, text, path)

    with torch.no_grad():
        assert_close(vision(x), want_image)
        assert_close(text(ids), want_text)
    assert result.logit_scale is not None
    assert result.logit_scale.item() == pytest.approx(src.logit_scale.item())
    torch.testing.assert_close(vision.head.bias, torch.zeros(vision.head.bias.shape), rtol=0, atol=0)


def test_clip_is_resized_bilinear_and_text_positions_truncated(tmp_path):
    src = tiny_openai_clip(seed=7)
    path = save(src.state_dict(), tmp_path / "clip.pt")

    vision = tiny_clip_vision(img_size=48, patch_size=16)  # 2x2 grid of 14 px -> 3x3 of 16 px
    text = tiny_text(clip_text_cfg(context_length=5), quick_gelu=True)
    load_vlm("clip", vision, text, path)

    pos = src.visual.positional_embedding.detach().unsqueeze(0)
    torch.testing.assert_close(vision.pos_embed.detach(), reference_resize(pos, 3, 1, "bilinear"), rtol=0, atol=1e-6)
    kernel = F.interpolate(src.visual.conv1.weight.detach(), size=(16, 16), mode="bilinear")
    torch.testing.assert_close(vision.patch_embed.proj.weight.detach(), kernel, rtol=0, atol=1e-6)
    torch.testing.assert_close(text.positional_embedding, src.positional_embedding[:5], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- EVA02


def test_baai_eva02_clip_pt_loads_into_timm_eva_and_open_clip_text(tmp_path):
    src_vision, src_text = tiny_eva(seed=8), tiny_text(clip_text_cfg(), quick_gelu=False, seed=9)
    state = eva_to_baai(src_vision.state_dict(), src_text.state_dict(), grid=2)
    path = save(state, tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt")
    assert detect_vlm_format(read_state_dict(path)) == "eva02-baai"

    vision, text = tiny_eva(), tiny_text(clip_text_cfg(), quick_gelu=False)
    result = load_vlm("eva02", vision, text, path)

    x, ids = images(28, seed=5), token_ids(7, 50, seed=5)
    with torch.no_grad():
        assert_close(vision.forward_features(x), src_vision.forward_features(x))
        assert_close(vision(x), src_vision(x))
        assert_close(text(ids), src_text(ids))
    assert result.logit_scale.item() == pytest.approx(4.6)


def test_open_clip_eva02_file_loads(tmp_path):
    src_vision, src_text = tiny_eva(seed=10), tiny_text(clip_text_cfg(), quick_gelu=False, seed=11)
    state = {"visual.trunk." + k: v for k, v in src_vision.state_dict().items()}
    state.update({"text." + k: v for k, v in src_text.state_dict().items()})
    state["logit_scale"] = torch.tensor(4.6)
    path = save(state, tmp_path / "open_clip_model.safetensors")
    assert detect_vlm_format(read_state_dict(path)) == "eva02-openclip"

    vision, text = tiny_eva(), tiny_text(clip_text_cfg(), quick_gelu=False)
    load_vlm("eva02", vision, text, path)

    x, ids = images(28, seed=6), token_ids(7, 50, seed=6)
    with torch.no_grad():
        assert_close(vision(x), src_vision(x))
        assert_close(text(ids), src_text(ids))


def test_eva02_pos_embed_is_resized_bicubic_and_rope_recomputed(tmp_path):
    src_vision = tiny_eva(seed=12)
    state = eva_to_baai(src_vision.state_dict(), {}, grid=2)
    path = save(state, tmp_path / "eva.pt")

    vision = tiny_eva(img_size=42)  # 2x2 -> 3x3 grid (real: 24x24 -> 36x36)
    load_vlm("eva02", vision, None, path)

    pos = reference_resize(src_vision.pos_embed.detach(), 3, prefix=1, mode="bicubic")
    torch.testing.assert_close(vision.pos_embed.detach(), pos, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert vision(images(42)).shape == (2, 24)


# ---------------------------------------------------------------------------------------------------- SigLIP


def test_hf_siglip_safetensors_match_the_hf_forward_and_keep_logit_scale_and_bias(tmp_path):
    state = hf_siglip_state(seed=13)
    path = save(state, tmp_path / "model.safetensors")

    vision, text = tiny_siglip_vision(), tiny_siglip_text()
    result = load_vlm("siglip", vision, text, path)

    x, ids = images(32, seed=7), token_ids(8, 40, seed=7)
    want_tokens, want_pooled = hf_siglip_vision_forward(state, x)
    with torch.no_grad():
        assert_close(vision.forward_features(x), want_tokens)
        assert_close(vision(x), want_pooled)
        assert_close(text(ids), hf_siglip_text_forward(state, ids))
    assert result.logit_scale.item() == pytest.approx(2.3)
    assert result.logit_bias.item() == pytest.approx(-10.0)


def test_open_clip_siglip_file_loads(tmp_path):
    src_vision, src_text = tiny_siglip_vision(seed=14), tiny_siglip_text(seed=15)
    state = {"visual.trunk." + k: v for k, v in src_vision.state_dict().items()}
    state.update({"text." + k: v for k, v in src_text.state_dict().items()})
    state.update(logit_scale=torch.tensor([2.3]), logit_bias=torch.tensor([-10.0]))
    path = save(state, tmp_path / "open_clip_pytorch_model.bin")
    assert detect_vlm_format(read_state_dict(path)) == "siglip-openclip"

    vision, text = tiny_siglip_vision(), tiny_siglip_text()
    result = load_vlm("siglip", vision, text, path)

    x, ids = images(32, seed=8), token_ids(8, 40, seed=8)
    with torch.no_grad():
        assert_close(vision(x), src_vision(x))
        assert_close(text(ids), src_text(ids))
    assert result.logit_bias.item() == pytest.approx(-10.0)


def test_siglip_pos_embed_is_resized_bilinear_without_a_class_row(tmp_path):
    state = hf_siglip_state(seed=16)
    weights = convert_vlm(state, tiny_siglip_vision(img_size=48))  # 2x2 -> 3x3 (real: 24x24 -> 32x32)

    pos = state["vision_model.embeddings.position_embedding.weight"].unsqueeze(0)
    torch.testing.assert_close(weights.vision["pos_embed"], reference_resize(pos, 3, 0, "bilinear"), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- errors


def test_a_file_of_another_family_is_refused_naming_the_file(tmp_path):
    path = save(hf_siglip_state(), tmp_path / "siglip.safetensors")
    with pytest.raises(CheckpointError, match=r"siglip\.safetensors.*expected a clip checkpoint.*siglip-hf"):
        load_vlm("clip", tiny_clip_vision(), None, path)


def test_a_vision_only_file_cannot_fill_a_text_tower(tmp_path):
    path = save(tiny_eva(seed=17).state_dict(), tmp_path / "eva02_timm.safetensors")
    with pytest.raises(CheckpointError, match=r"eva02_timm\.safetensors holds no text tower"):
        load_vlm("eva02", tiny_eva(), tiny_text(clip_text_cfg(), quick_gelu=False), path)


def test_an_unknown_layout_is_named(tmp_path):
    path = save({"encoder.weight": torch.zeros(3)}, tmp_path / "mystery.pt")
    with pytest.raises(CheckpointError, match=r"mystery\.pt: not a DINOv2 checkpoint"):
        load_dinov2(tiny_dinov2(), path)


def test_a_missing_block_is_a_partial_load_unless_allowed(tmp_path):
    state = {k: v for k, v in tiny_dinov2(seed=18).state_dict().items() if not k.startswith(f"blocks.{DEPTH - 1}.")}
    path = save(state, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"short\.pth.*missing keys \[blocks\.1\.norm1\.weight"):
        load_dinov2(tiny_dinov2(), path)
    report = load_dinov2(tiny_dinov2(), path, allow_partial=True)
    assert "blocks.1.norm1.weight" in report.missing


def test_fp16_files_are_resized_in_float32_like_the_reference(tmp_path):
    src = tiny_openai_clip(seed=19).half()  # OpenAI's ViT-L-14-336px.pt holds fp16 weights
    path = save(src.state_dict(), tmp_path / "ViT-L-14-336px-fp16.pt")
    vision = tiny_clip_vision(img_size=48, patch_size=16)

    load_vlm("clip", vision, None, path)

    # Reference: torch.jit.load(...).float() first, then F.interpolate in float32.
    pos = src.visual.positional_embedding.detach().float().unsqueeze(0)
    torch.testing.assert_close(vision.pos_embed.detach(), reference_resize(pos, 3, 1, "bilinear"), rtol=0, atol=0)
