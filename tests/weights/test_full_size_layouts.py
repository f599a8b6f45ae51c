"""At real size (shape-only meta tensors), every public checkpoint layout maps key-for-key onto MFuser's encoders.

The tiny-model tests check values; these check that the real files' key sets and shapes (37x37 DINOv2 grid, 24x24
CLIP/EVA/SigLIP grids, 77/64-token text tables) become exactly the modules MFuser builds at 512x512 input, including
the resizes of section 1.1 of the reference notes, with no key left over or missing.
"""

from __future__ import annotations

import open_clip
import pytest
import timm
import torch
from open_clip.model import CLIP, _build_text_tower
from tiny_backbones import eva_to_baai, hf_dinov2_state, hf_siglip_state

from mfuser_model.weights import convert_dinov2, convert_vlm, expected_shapes


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def target_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in expected_shapes(module).items()}


def text_tower(model_name: str, context_length: int, quick_gelu: bool) -> torch.nn.Module:
    cfg = open_clip.get_model_config(model_name)
    return _build_text_tower(cfg["embed_dim"], dict(cfg["text_cfg"], context_length=context_length), quick_gelu)


@pytest.fixture(autouse=True)
def _on_meta_device():
    with torch.device("meta"):
        yield


@pytest.mark.parametrize(("patch", "grid"), [(16, 32), (14, 36)])  # CLIP/SigLIP pairings, EVA pairing
@pytest.mark.parametrize("source", ["meta", "hf"])
def test_dinov2_large_maps_onto_the_512px_encoder(source, patch, grid):
    if source == "meta":
        state = dict(timm.create_model("vit_large_patch14_dinov2", pretrained=False).state_dict())
        state["mask_token"] = torch.empty(1, 1024)
    else:
        state = hf_dinov2_state(518, 14, width=1024, depth=24, meta=True)
    target = timm.create_model("vit_large_patch14_dinov2", pretrained=False, img_size=512, patch_size=patch)

    converted = convert_dinov2(state, target)

    assert shapes(converted) == target_shapes(target)
    assert converted["pos_embed"].shape == (1, grid * grid + 1, 1024)


def test_openai_clip_l14_336_maps_onto_the_p16_encoder_and_10_token_text():
    cfg = open_clip.get_model_config("ViT-L-14-336")
    state = CLIP(**cfg, quick_gelu=True).state_dict()
    vision = timm.create_model("vit_large_patch14_clip_quickgelu_336", pretrained=False, img_size=512, patch_size=16)
    text = text_tower("ViT-L-14-336", 10, quick_gelu=True)

    weights = convert_vlm(state, vision, text, family="clip")

    assert shapes(weights.vision) == target_shapes(vision)
    assert shapes(weights.text) == target_shapes(text)
    assert weights.vision["patch_embed.proj.weight"].shape == (1024, 3, 16, 16)


def test_baai_eva02_clip_l_336_maps_onto_the_36x36_encoder_and_13_token_text():
    src_vision = timm.create_model("eva02_large_patch14_clip_336", pretrained=False)
    src_text = text_tower("EVA02-L-14-336", 77, quick_gelu=False)
    state = eva_to_baai(src_vision.state_dict(), src_text.state_dict(), grid=24, depth=24, head_dim=64)
    vision = timm.create_model("eva02_large_patch14_clip_336", pretrained=False, img_size=512)
    text = text_tower("EVA02-L-14-336", 13, quick_gelu=False)

    weights = convert_vlm(state, vision, text, family="eva02")

    assert shapes(weights.vision) == target_shapes(vision)
    assert shapes(weights.text) == target_shapes(text)
    assert weights.vision["pos_embed"].shape == (1, 36 * 36 + 1, 1024)


@pytest.mark.parametrize(("model_name", "timm_name"), [("EVA02-L-14-336", "eva02_large_patch14_clip_336"),
                                                       ("ViT-L-16-SigLIP-384", "vit_large_patch16_siglip_384")])
def test_open_clip_files_map_onto_the_512px_encoders(model_name, timm_name):
    cfg = open_clip.get_model_config(model_name)
    # open_clip's TimmModel builds its trunk with num_classes = embed_dim (EVA) or 0 (SigLIP, proj 'none').
    trunk = timm.create_model(timm_name, pretrained=False, num_classes=cfg["embed_dim"] if "EVA" in model_name else 0)
    state = {"visual.trunk." + k: v for k, v in trunk.state_dict().items()}
    state.update({"text." + k: v for k, v in text_tower(model_name, 77 if "EVA" in model_name else 64, False)
                  .state_dict().items()})  # fmt: skip
    state["logit_scale"] = torch.empty(())
    vision = timm.create_model(timm_name, pretrained=False, img_size=512)
    text = text_tower(model_name, 10, quick_gelu=False)

    weights = convert_vlm(state, vision, text)

    assert shapes(weights.vision) == target_shapes(vision)
    assert shapes(weights.text) == target_shapes(text)


def test_hf_siglip_large_384_maps_onto_the_512px_encoder_and_10_token_text():
    state = hf_siglip_state(384, 16, context=64, vocab=32000, width=1024, depth=24, embed=1024, meta=True)
    vision = timm.create_model("vit_large_patch16_siglip_384", pretrained=False, img_size=512)
    text = text_tower("ViT-L-16-SigLIP-384", 10, quick_gelu=False)

    weights = convert_vlm(state, vision, text, family="siglip")

    assert shapes(weights.vision) == target_shapes(vision)
    assert shapes(weights.text) == target_shapes(text)
    assert weights.vision["pos_embed"].shape == (1, 32 * 32, 1024)
