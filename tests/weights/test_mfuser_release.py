"""Released MFuser checkpoints (mmseg .pth, reference names) convert into whole-model files that predict the same.

The fixture writes a tiny random MFuser in the reference code's names and layouts. The layout is taken from the
reference code (models/backbones/{clip/models.py, eva_clip/*, siglip/modeling_siglip.py, dino_v2.py},
eva_clip/adapter_module.py, mmseg/models/{decode_heads/tqdm_head.py, plugins/tqdm_msdeformattn_pixel_decoder.py,
utils/transformer.py} and mmcv 1.x bricks) twice: once as a key list written out from those modules
(:func:`reference_keys`) and once by filling each reference tensor from a project model (:func:`to_reference`),
so the fixture's key set is checked against names written independently of the converter. An independent
MVFuser forward written from the reference's ``MVFuser.forward`` checks the converted fuser numerically.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mfuser_model.checkpoint import load_model, read_model_metadata
from mfuser_model.config import ModelConfig, load_model_config
from mfuser_model.errors import CheckpointError, ConfigError
from mfuser_model.network.mfuser import MFuser, build_mfuser
from mfuser_model.weights.convert_cli import main
from mfuser_model.weights.mfuser_release import (
    NOT_IN_RELEASE,
    convert_release_state_dict,
    release_config,
    unused_release_keys,
)

PRESETS = {"clip": "tiny-clip", "eva02": "tiny-eva02", "siglip": "tiny-siglip"}
T = torch.Tensor


# ---------------------------------------------------------------------------------------------------------------
# The reference layout, written out from the reference modules


def _wb(prefix: str) -> list[str]:
    return [f"{prefix}.weight", f"{prefix}.bias"]


def _openai_block(p: str) -> list[str]:
    # clip/models.py ResidualAttentionBlock and eva_clip/transformer.py ResidualAttentionBlock (xattn Attention keeps
    # nn.MultiheadAttention's in_proj_weight / in_proj_bias / out_proj names).
    return [f"{p}.attn.in_proj_weight", f"{p}.attn.in_proj_bias", *_wb(f"{p}.attn.out_proj"), *_wb(f"{p}.ln_1"),
            *_wb(f"{p}.mlp.c_fc"), *_wb(f"{p}.mlp.c_proj"), *_wb(f"{p}.ln_2")]


def _hf_siglip_layer(p: str) -> list[str]:
    # siglip/modeling_siglip.py SiglipEncoderLayer
    return [k for n in ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj",
                        "layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2") for k in _wb(f"{p}.{n}")]


_MVFUSER = ("in_proj.weight", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight",
            "conv1d_x.weight", "conv1d_z.weight", "norm.weight", "scale")


def _mmcv_mha(p: str) -> list[str]:
    return [f"{p}.attn.in_proj_weight", f"{p}.attn.in_proj_bias", *_wb(f"{p}.attn.out_proj")]


def _mmcv_ffn_norms(p: str) -> list[str]:
    return [*_wb(f"{p}.ffns.0.layers.0.0"), *_wb(f"{p}.ffns.0.layers.1"),
            *[k for i in range(3) for k in _wb(f"{p}.norms.{i}")]]


def reference_keys(kind: str, c: ModelConfig) -> set[str]:
    """Every state-dict key of the reference MFuser_{CLIP,EVA_CLIP,SIGLIP} segmentor at the depths of ``c``."""
    keys: list[str] = []
    d = "backbone.dinov2"
    keys += [f"{d}.cls_token", f"{d}.pos_embed", f"{d}.mask_token", *_wb(f"{d}.patch_embed.proj"), *_wb(f"{d}.norm")]
    for i in range(c.depth):
        b = f"{d}.blocks.{i}"
        keys += [f"{b}.ls1.gamma", f"{b}.ls2.gamma"]
        keys += [k for n in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for k in _wb(f"{b}.{n}")]
    keys += [f"backbone.adapter.{i}.{n}" for i in range(c.depth) for n in _MVFUSER]
    keys += [*_wb("backbone.fpn1.0"), *_wb("backbone.fpn1.1"), "backbone.fpn1.1.running_mean",
             "backbone.fpn1.1.running_var", "backbone.fpn1.1.num_batches_tracked", *_wb("backbone.fpn1.3"),
             *_wb("backbone.fpn2.0")]
    if kind in ("clip", "siglip"):
        keys += [k for i in range(c.depth) for j in (1, 2) for k in _wb(f"backbone.adapter_proj{j}.{i}")]
        keys += _wb("backbone.adapter_proj3")
    if kind == "clip":
        keys += ["backbone.conv1.weight", "backbone.class_embedding", "backbone.positional_embedding",
                 *_wb("backbone.ln_pre"), *_wb("backbone.ln_post"), "backbone.proj"]
        keys += [k for i in range(c.depth) for k in _openai_block(f"backbone.transformer.resblocks.{i}")]
    elif kind == "eva02":
        keys += [*_wb("backbone.patch_embed.proj"), "backbone.cls_token", "backbone.pos_embed",
                 "backbone.rope.freqs_cos", "backbone.rope.freqs_sin", *_wb("backbone.norm"), *_wb("backbone.head")]
        for i in range(c.depth):
            b = f"backbone.blocks.{i}"
            keys += [f"{b}.attn.q_proj.weight", f"{b}.attn.k_proj.weight", f"{b}.attn.v_proj.weight",
                     f"{b}.attn.q_bias", f"{b}.attn.v_bias", f"{b}.attn.rope.freqs_cos", f"{b}.attn.rope.freqs_sin"]
            keys += [k for n in ("norm1", "attn.inner_attn_ln", "attn.proj", "norm2", "mlp.w1", "mlp.w2",
                                 "mlp.ffn_ln", "mlp.w3") for k in _wb(f"{b}.{n}")]
    else:
        keys += [*_wb("backbone.embeddings.patch_embedding"), "backbone.embeddings.position_embedding.weight",
                 *_wb("backbone.post_layernorm"), "backbone.head.probe", "backbone.head.attention.in_proj_weight",
                 "backbone.head.attention.in_proj_bias", *_wb("backbone.head.attention.out_proj"),
                 *_wb("backbone.head.layernorm"), *_wb("backbone.head.mlp.fc1"), *_wb("backbone.head.mlp.fc2")]
        keys += [k for i in range(c.depth) for k in _hf_siglip_layer(f"backbone.encoder.layers.{i}")]
    if kind == "siglip":
        keys += ["text_encoder.embeddings.token_embedding.weight", "text_encoder.embeddings.position_embedding.weight",
                 *_wb("text_encoder.final_layer_norm"), *_wb("text_encoder.head")]
        keys += [k for i in range(c.text_layers) for k in _hf_siglip_layer(f"text_encoder.encoder.layers.{i}")]
    else:
        keys += ["text_encoder.token_embedding.weight", "text_encoder.positional_embedding",
                 *_wb("text_encoder.ln_final"), "text_encoder.text_projection"]
        keys += [k for i in range(c.text_layers) for k in _openai_block(f"text_encoder.transformer.resblocks.{i}")]
    keys += ["contexts", "gamma"] + (["random_text"] if kind == "eva02" else [])
    cd = "context_decoder"
    keys += [k for n in ("memory_proj.0", "memory_proj.1", "memory_proj.2", "text_proj.0", "text_proj.1",
                         "out_proj.0", "out_proj.1") for k in _wb(f"{cd}.{n}")]
    for i in range(c.context_layers):
        L = f"{cd}.decoder.{i}"
        keys += [f"{L}.self_attn.q_proj.weight", f"{L}.self_attn.k_proj.weight", f"{L}.self_attn.v_proj.weight"]
        keys += [k for n in ("self_attn.proj", "norm1", "norm2", "norm3", "mlp.0", "mlp.3") for k in _wb(f"{L}.{n}")]
        keys += [f"{L}.cross_attn.{n}" for n in _MVFUSER]
    pd = "decode_head.pixel_decoder"
    for i in range(3):
        keys += [*_wb(f"{pd}.input_convs.{i}.conv"), *_wb(f"{pd}.input_convs.{i}.gn")]
    for i in range(c.head_pixel_decoder_layers):
        L = f"{pd}.encoder.layers.{i}"
        keys += [k for n in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
                 for k in _wb(f"{L}.attentions.0.{n}")]
        keys += _mmcv_mha(f"{L}.attentions.1") + _mmcv_ffn_norms(L)
    keys += [*_wb(f"{pd}.encoder.post_norm"), f"{pd}.level_encoding.weight", f"{pd}.lateral_convs.0.conv.weight",
             *_wb(f"{pd}.lateral_convs.0.gn"), f"{pd}.output_convs.0.conv.weight", *_wb(f"{pd}.output_convs.0.gn"),
             *_wb(f"{pd}.mask_feature"), *_wb(f"{pd}.text_proj"), f"{pd}.text_pos_embed.weight"]
    td = "decode_head.transformer_decoder"
    for i in range(c.head_decoder_layers):
        keys += _mmcv_mha(f"{td}.layers.{i}.attentions.0") + _mmcv_mha(f"{td}.layers.{i}.attentions.1")
        keys += _mmcv_ffn_norms(f"{td}.layers.{i}")
    keys += [*_wb(f"{td}.post_norm"), "decode_head.query_embed.weight", "decode_head.level_embed.weight",
             *_wb("decode_head.text_proj.0"), *_wb("decode_head.text_proj.2"), *_wb("decode_head.cls_embed"),
             *_wb("decode_head.mask_embed.0"), *_wb("decode_head.mask_embed.2"), *_wb("decode_head.mask_embed.4")]
    assert len(keys) == len(set(keys)), "duplicate key in the written-out reference layout"
    return set(keys)


# ---------------------------------------------------------------------------------------------------------------
# The fixture: a project model's numbers in the reference layout


def _reference_fuser(f: torch.nn.Module, p: str) -> dict[str, T]:
    return {f"{p}.in_proj.weight": f.in_proj.weight, f"{p}.conv1d_x.weight": f.conv_x.weight,
            f"{p}.conv1d_z.weight": f.conv_z.weight, f"{p}.x_proj.weight": f.x_proj.weight,
            f"{p}.dt_proj.weight": f.dt_proj.weight,
            f"{p}.dt_proj.bias": f.dt_proj.bias, f"{p}.A_log": f.A_log, f"{p}.D": f.D,
            f"{p}.norm.weight": f.norm.weight, f"{p}.out_proj.weight": f.out_proj.weight,
            f"{p}.scale": f.scale.reshape(())}


def _lin(out: dict, ref: str, module: torch.nn.Module) -> None:
    out[f"{ref}.weight"] = module.weight
    if getattr(module, "bias", None) is not None:
        out[f"{ref}.bias"] = module.bias


def _openai_text_block(out: dict, p: str, blk: torch.nn.Module) -> None:
    out[f"{p}.attn.in_proj_weight"] = blk.attn.in_proj_weight
    out[f"{p}.attn.in_proj_bias"] = blk.attn.in_proj_bias
    for ref, mod in (("attn.out_proj", blk.attn.out_proj), ("ln_1", blk.ln_1), ("ln_2", blk.ln_2),
                     ("mlp.c_fc", blk.mlp.c_fc), ("mlp.c_proj", blk.mlp.c_proj)):
        _lin(out, f"{p}.{ref}", mod)


def _timm_block_openai(out: dict, p: str, blk: torch.nn.Module) -> None:
    out[f"{p}.attn.in_proj_weight"] = blk.attn.qkv.weight
    out[f"{p}.attn.in_proj_bias"] = blk.attn.qkv.bias
    for ref, mod in (("attn.out_proj", blk.attn.proj), ("ln_1", blk.norm1), ("ln_2", blk.norm2),
                     ("mlp.c_fc", blk.mlp.fc1), ("mlp.c_proj", blk.mlp.fc2)):
        _lin(out, f"{p}.{ref}", mod)


def _hf_layer(out: dict, p: str, qkv_w: T, qkv_b: T, pairs: list[tuple[str, torch.nn.Module]]) -> None:
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), qkv_w.chunk(3), qkv_b.chunk(3), strict=True):
        out[f"{p}.self_attn.{name}.weight"], out[f"{p}.self_attn.{name}.bias"] = w, b
    for ref, mod in pairs:
        _lin(out, f"{p}.{ref}", mod)


def _vision_reference(m: MFuser, kind: str) -> dict[str, T]:
    """The VLM vision tower in the reference backbone's own names (without the ``backbone.`` prefix)."""
    v = m.backbone.vlm
    out: dict[str, T] = {}
    if kind == "clip":
        out.update({"conv1.weight": v.patch_embed.proj.weight, "class_embedding": v.cls_token.reshape(-1),
                    "positional_embedding": v.pos_embed[0],
                    "proj": v.head.weight.t()})
        _lin(out, "ln_pre", v.norm_pre)
        _lin(out, "ln_post", v.norm)
        for i, blk in enumerate(v.blocks):
            _timm_block_openai(out, f"transformer.resblocks.{i}", blk)
    elif kind == "eva02":
        out.update({"cls_token": v.cls_token, "pos_embed": v.pos_embed})
        _lin(out, "patch_embed.proj", v.patch_embed.proj)
        _lin(out, "norm", v.norm)
        _lin(out, "head", v.head)
        grid = m.config.img_size // m.config.patch_size
        head_dim = m.config.vlm_dim // m.config.vlm_heads
        dev = v.cls_token.device
        rope = {n: torch.randn(grid * grid, head_dim, device=dev) for n in ("freqs_cos", "freqs_sin")}
        out.update({f"rope.{k}": t for k, t in rope.items()})
        for i, blk in enumerate(v.blocks):
            p = f"blocks.{i}"
            a = blk.attn
            out.update({f"{p}.attn.q_proj.weight": a.q_proj.weight, f"{p}.attn.k_proj.weight": a.k_proj.weight,
                        f"{p}.attn.v_proj.weight": a.v_proj.weight, f"{p}.attn.q_bias": a.q_proj.bias,
                        f"{p}.attn.v_bias": a.v_proj.bias})
            out.update({f"{p}.attn.rope.{k}": t for k, t in rope.items()})
            for ref, mod in (("norm1", blk.norm1), ("attn.inner_attn_ln", a.norm), ("attn.proj", a.proj),
                             ("norm2", blk.norm2), ("mlp.w1", blk.mlp.fc1_g), ("mlp.w2", blk.mlp.fc1_x),
                             ("mlp.ffn_ln", blk.mlp.norm), ("mlp.w3", blk.mlp.fc2)):
                _lin(out, f"{p}.{ref}", mod)
    else:
        out["embeddings.position_embedding.weight"] = v.pos_embed[0]
        _lin(out, "embeddings.patch_embedding", v.patch_embed.proj)
        _lin(out, "post_layernorm", v.norm)
        pool = v.attn_pool
        out.update({"head.probe": pool.latent, "head.attention.in_proj_weight": torch.cat([pool.q.weight,
                                                                                           pool.kv.weight]),
                    "head.attention.in_proj_bias": torch.cat([pool.q.bias, pool.kv.bias])})
        for ref, mod in (("head.attention.out_proj", pool.proj), ("head.layernorm", pool.norm),
                         ("head.mlp.fc1", pool.mlp.fc1), ("head.mlp.fc2", pool.mlp.fc2)):
            _lin(out, ref, mod)
        for i, blk in enumerate(v.blocks):
            _hf_layer(out, f"encoder.layers.{i}", blk.attn.qkv.weight, blk.attn.qkv.bias,
                      [("self_attn.out_proj", blk.attn.proj), ("layer_norm1", blk.norm1),
                       ("layer_norm2", blk.norm2), ("mlp.fc1", blk.mlp.fc1), ("mlp.fc2", blk.mlp.fc2)])
    return out


def _text_reference(m: MFuser, kind: str, rows: int) -> dict[str, T]:
    t = m.text_encoder.tower
    out: dict[str, T] = {}
    if kind == "siglip":
        out["embeddings.token_embedding.weight"] = t.token_embedding.weight
        out["embeddings.position_embedding.weight"] = t.positional_embedding[:rows]
        _lin(out, "final_layer_norm", t.ln_final)
        _lin(out, "head", t.text_projection)
        for i, blk in enumerate(t.transformer.resblocks):
            _hf_layer(out, f"encoder.layers.{i}", blk.attn.in_proj_weight, blk.attn.in_proj_bias,
                      [("self_attn.out_proj", blk.attn.out_proj), ("layer_norm1", blk.ln_1), ("layer_norm2", blk.ln_2),
                       ("mlp.fc1", blk.mlp.c_fc), ("mlp.fc2", blk.mlp.c_proj)])
        return out
    out.update({"token_embedding.weight": t.token_embedding.weight,
                "positional_embedding": t.positional_embedding[:rows], "text_projection": t.text_projection})
    _lin(out, "ln_final", t.ln_final)
    for i, blk in enumerate(t.transformer.resblocks):
        _openai_text_block(out, f"transformer.resblocks.{i}", blk)
    return out


def _head_reference(m: MFuser) -> dict[str, T]:
    h, pd = m.head, m.head.pixel_decoder
    out: dict[str, T] = {}
    p = "decode_head.pixel_decoder"
    for name in ("input_convs", "lateral_convs", "output_convs"):
        for i, conv in enumerate(getattr(pd, name)):
            _lin(out, f"{p}.{name}.{i}.conv", conv.conv)
            _lin(out, f"{p}.{name}.{i}.gn", conv.gn)
    for ref, mod in (("mask_feature", pd.mask_feature), ("text_proj", pd.text_proj), ("encoder.post_norm",
                                                                                        pd.post_norm)):
        _lin(out, f"{p}.{ref}", mod)
    out[f"{p}.level_encoding.weight"] = pd.level_encoding.weight
    out[f"{p}.text_pos_embed.weight"] = pd.text_pos_embed.weight
    for i, layer in enumerate(pd.layers):
        L = f"{p}.encoder.layers.{i}"
        for n in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            _lin(out, f"{L}.attentions.0.{n}", getattr(layer.self_attn, n))
        _mha(out, f"{L}.attentions.1", layer.cross_attn)
        _ffn_norms(out, L, layer)
    for i, layer in enumerate(h.layers):
        L = f"decode_head.transformer_decoder.layers.{i}"
        _mha(out, f"{L}.attentions.0", layer.cross_attn)
        _mha(out, f"{L}.attentions.1", layer.self_attn)
        _ffn_norms(out, L, layer)
    _lin(out, "decode_head.transformer_decoder.post_norm", h.decoder_norm)
    for ref, mod in (("text_proj.0", h.text_proj[0]), ("text_proj.2", h.text_proj[2]), ("cls_embed", h.cls_embed),
                     ("mask_embed.0", h.mask_embed[0]), ("mask_embed.2", h.mask_embed[2]),
                     ("mask_embed.4", h.mask_embed[4]), ("query_embed", h.query_embed), ("level_embed", h.level_embed)):
        _lin(out, f"decode_head.{ref}", mod)
    return out


def _mha(out: dict, p: str, attn: torch.nn.Module) -> None:
    out[f"{p}.attn.in_proj_weight"] = attn.in_proj_weight
    out[f"{p}.attn.in_proj_bias"] = attn.in_proj_bias
    _lin(out, f"{p}.attn.out_proj", attn.out_proj)


def _ffn_norms(out: dict, p: str, layer: torch.nn.Module) -> None:
    _lin(out, f"{p}.ffns.0.layers.0.0", layer.ffn.fc1)
    _lin(out, f"{p}.ffns.0.layers.1", layer.ffn.fc2)
    for i, norm in enumerate((layer.norm1, layer.norm2, layer.norm3)):
        _lin(out, f"{p}.norms.{i}", norm)


def to_reference(m: MFuser, kind: str) -> dict[str, T]:
    """The reference segmentor's state dict holding the numbers of project model ``m``."""
    c = m.config
    bb = m.backbone
    out: dict[str, T] = {f"backbone.dinov2.{k}": v for k, v in bb.vfm.state_dict().items()}
    dev = m.gamma.device
    out["backbone.dinov2.mask_token"] = torch.randn(1, c.vfm_dim, device=dev)
    out.update({f"backbone.{k}": v for k, v in _vision_reference(m, kind).items()})
    for i, f in enumerate(bb.fusers):
        out.update(_reference_fuser(f, f"backbone.adapter.{i}"))
    if kind == "clip":
        out.update({f"backbone.{k}": v for k, v in bb.state_dict().items() if k.startswith("adapter_proj")})
    elif kind == "siglip":  # built and trained by the reference, never used: random numbers must not matter
        for i in range(c.depth):
            for j, (o, n) in enumerate(((c.vlm_dim, c.vfm_dim), (c.vfm_dim, c.vlm_dim)), start=1):
                out[f"backbone.adapter_proj{j}.{i}.weight"] = torch.randn(o, n, device=dev)
                out[f"backbone.adapter_proj{j}.{i}.bias"] = torch.randn(o, device=dev)
        out["backbone.adapter_proj3.weight"] = torch.randn(c.vlm_dim, c.vfm_dim, device=dev)
        out["backbone.adapter_proj3.bias"] = torch.randn(c.vlm_dim, device=dev)
    for name, t in bb.pyramid.fpn1.state_dict().items():
        out[f"backbone.fpn1.{name}"] = t
    _lin(out, "backbone.fpn2.0", bb.pyramid.fpn2)
    rows = c.name_length + c.num_context
    out.update({f"text_encoder.{k}": v for k, v in _text_reference(m, kind, rows).items()})
    out["contexts"] = m.text_encoder.contexts
    out["gamma"] = m.gamma
    if kind == "eva02":
        out["random_text"] = torch.randn(c.num_classes, c.text_dim, device=dev)
    cd = m.context_decoder
    for name in ("memory_proj", "text_proj", "out_proj"):
        for k, v in getattr(cd, name).state_dict().items():
            out[f"context_decoder.{name}.{k}"] = v
    for i, layer in enumerate(cd.layers):
        L = f"context_decoder.decoder.{i}"
        for ref, mod in (("self_attn.q_proj", layer.q_proj), ("self_attn.k_proj", layer.k_proj),
                         ("self_attn.v_proj", layer.v_proj), ("self_attn.proj", layer.attn_proj),
                         ("norm1", layer.norm1), ("norm2", layer.norm2), ("norm3", layer.norm3),
                         ("mlp.0", layer.mlp[0]), ("mlp.3", layer.mlp[3])):
            _lin(out, f"{L}.{ref}", mod)
        out.update(_reference_fuser(layer.fuser, f"{L}.cross_attn"))
    out.update(_head_reference(m))
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


@torch.no_grad()
def _perturb_(model: MFuser, seed: int) -> MFuser:
    """Move every float tensor off its init (biases and norms included), so no mapping hides behind 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    # CLIP / EVA02 score maps are cos / 0.07 in the reference; only SigLIP's calibration comes from a file.
    fixed = () if model.config.vlm == "siglip" else ("logit_scale", "logit_bias")
    for name, t in model.state_dict().items():
        if t.is_floating_point() and name not in fixed:
            t.add_(torch.randn(t.shape, generator=gen) * 0.05)
    if model.config.vlm == "clip":
        model.backbone.vlm.head.bias.zero_()  # OpenAI's proj has no bias
    return model.eval()


def _fixture_model(kind: str, seed: int = 0) -> MFuser:
    torch.manual_seed(seed)
    return _perturb_(build_mfuser(load_model_config(PRESETS[kind])), seed)


def _save_release(state: dict[str, T], path: Path) -> Path:
    """Save the way mmcv's save_checkpoint does: {'meta': ..., 'state_dict': ..., 'optimizer': ...}."""
    meta = {"mmcv_version": "1.5.1", "time": "Mon Jun  2 10:00:00 2025", "iter": 20000, "epoch": 1,
            "CLASSES": tuple(load_model_config("tiny-clip").class_names), "PALETTE": [[128, 64, 128]] * 19}
    torch.save({"meta": meta, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def _images(size: int) -> T:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP spinning makes each
    # tiny forward take seconds instead of milliseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["clip", "eva02", "siglip"])
def release(request, tmp_path_factory):
    kind = request.param
    model = _fixture_model(kind)
    state = to_reference(model, kind)
    folder = tmp_path_factory.mktemp(f"release-{kind}")
    path = _save_release(state, folder / f"mfuser_{kind}_g2c.pth")
    extra = {}
    if kind == "siglip":  # the reference reads these from siglip_vitl16_384.pth, not from the release
        extra["vlm"] = folder / "siglip_vitl16_384.pth"
        torch.save({"logit_scale": model.logit_scale.reshape(1), "logit_bias": model.logit_bias.reshape(1),
                    "text_model.head.weight": torch.zeros(2, 2)}, extra["vlm"])
    return kind, model, state, path, extra


def test_fixture_has_exactly_the_reference_keys_and_constructor_shapes(release):
    kind, model, state, _, _ = release
    c = model.config
    assert set(state) == reference_keys(kind, c)
    d, h, r = c.vlm_dim, c.vlm_dim // 2, math.ceil(c.vlm_dim / 16)
    a = "backbone.adapter.0"
    # MVFuser(d_model, d_state=16): expand 1, halves of D, dt_rank ceil(D/16), k=3 depthwise convs, 0-d scale
    assert state[f"{a}.in_proj.weight"].shape == (d, d)
    assert state[f"{a}.x_proj.weight"].shape == (r + 2 * 16, h)
    assert state[f"{a}.dt_proj.weight"].shape == (h, r)
    assert state[f"{a}.A_log"].shape == (h, 16)
    assert state[f"{a}.conv1d_x.weight"].shape == (h, 1, 3)
    assert state[f"{a}.out_proj.weight"].shape == (d, h)
    assert state[f"{a}.scale"].shape == ()
    # fpn_dim = VFM width + VLM width, ConvTranspose2d weight (in, out, 2, 2)
    assert state["backbone.fpn1.0.weight"].shape == (c.vfm_dim + d, c.vfm_dim + d, 2, 2)
    # prompt: text positions cut to T + P, contexts (1, P, width)
    rows = c.name_length + c.num_context
    siglip_pos = "text_encoder.embeddings.position_embedding.weight"
    pos = siglip_pos if kind == "siglip" else "text_encoder.positional_embedding"
    assert state[pos].shape == (rows, c.text_width)
    assert state["contexts"].shape == (1, c.num_context, c.text_width)
    # mmcv MultiScaleDeformableAttention(256 -> heads * levels * points * 2) with 3 levels, 4 points
    so = "decode_head.pixel_decoder.encoder.layers.0.attentions.0.sampling_offsets.weight"
    assert state[so].shape == (c.head_heads * 3 * 4 * 2, c.head_dim)
    assert state["decode_head.cls_embed.weight"].shape == (c.num_classes + 1, c.head_dim)
    assert state["decode_head.pixel_decoder.input_convs.0.conv.weight"].shape == (c.head_dim, c.vfm_dim + d, 1, 1)
    grid = c.img_size // c.patch_size
    if kind == "clip":  # (input_resolution // patch)^2 + 1 rows, proj (width, output_dim)
        assert state["backbone.positional_embedding"].shape == (grid * grid + 1, d)
        assert state["backbone.proj"].shape == (d, c.text_dim)
    if kind == "eva02":  # RoPE tables: grid^2 x head_dim
        assert state["backbone.rope.freqs_cos"].shape == (grid * grid, d // c.vlm_heads)


def test_cli_converts_a_release_into_a_model_that_predicts_the_same(release, tmp_path):
    kind, model, _, path, extra = release
    out = tmp_path / "converted.safetensors"
    argv = ["--release", str(path), "--preset", PRESETS[kind], "-o", str(out)]
    if "vlm" in extra:
        argv += ["--vlm", str(extra["vlm"])]
    assert main(argv) == 0
    meta = read_model_metadata(out)
    assert meta["source"] == "mfuser-release"
    loaded = load_model(out).eval()
    assert loaded.config.name == PRESETS[kind]
    assert loaded.config.class_names == model.config.class_names
    assert loaded.config.text_context_length == model.config.name_length + model.config.num_context
    assert torch.equal(loaded.text_encoder.token_ids, model.text_encoder.token_ids)
    assert torch.equal(loaded.logit_scale, model.logit_scale)
    assert torch.equal(loaded.logit_bias, model.logit_bias)
    size = 56 if kind == "eva02" else 64
    with torch.no_grad():
        ref_out, new_out = model(_images(size)), loaded(_images(size))
    for a, b in zip(ref_out.class_logits + ref_out.mask_logits, new_out.class_logits + new_out.mask_logits,
                    strict=True):
        assert (a - b).abs().max() <= 1e-5
    assert (ref_out.score_map - new_out.score_map).abs().max() <= 1e-5
    with torch.no_grad():
        assert (model.predict(_images(size)) - loaded.predict(_images(size))).abs().max() <= 1e-6
    # every tensor of the file came from the release (or, for the three NOT_IN_RELEASE keys, from elsewhere)
    tensors = load_file(str(out))
    assert set(tensors) == set(model.state_dict())


def test_dead_reference_parameters_are_dropped_and_logged(release, caplog):
    kind, model, state, path, _ = release
    config = release_config(state, model.config)
    with caplog.at_level("INFO", logger="mfuser_model.weights.mfuser_release"):
        converted = convert_release_state_dict(state, config, source=path)
    dropped = unused_release_keys(state)
    assert "backbone.dinov2.mask_token" in dropped
    if kind == "siglip":
        assert sum(k.startswith("backbone.adapter_proj") for k in dropped) == 2 * 2 * model.config.depth + 2
        assert "adapter_proj1" in caplog.text
    if kind == "eva02":
        assert "random_text" in dropped and "random_text" in caplog.text
        assert "backbone.rope.freqs_cos" in dropped
    assert not set(converted) & set(NOT_IN_RELEASE)
    assert set(converted) | set(NOT_IN_RELEASE) == set(model.state_dict())


def _reference_selective_scan(u: T, delta: T, A: T, B: T, C: T, D: T, delta_bias: T) -> T:  # noqa: N803 (Mamba's names)
    """mamba_ssm selective_scan_fn(delta_softplus=True, z=None) as a loop: u, delta (b, d, l); B, C (b, n, l)."""
    delta = F.softplus(delta + delta_bias[None, :, None])
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[-1]):
        state = torch.exp(delta[:, :, i, None] * A) * state + delta[:, :, i, None] * B[:, None, :, i] * u[:, :, i, None]
        ys.append((state * C[:, None, :, i]).sum(-1))
    return torch.stack(ys, dim=-1) + u * D[None, :, None]


def _reference_mvfuser(sd: dict[str, T], p: str, x: T) -> T:
    """adapter_module.MVFuser.forward in eval mode, written from the reference code with its own tensors."""
    length = x.shape[1]
    h = sd[f"{p}.out_proj.weight"].shape[1]
    rank = sd[f"{p}.dt_proj.weight"].shape[1]
    n = sd[f"{p}.A_log"].shape[1]
    xz = (x @ sd[f"{p}.in_proj.weight"].t()).transpose(1, 2)  # b d l
    xs, z = xz.chunk(2, dim=1)
    a = -torch.exp(sd[f"{p}.A_log"].float())
    xs = F.silu(F.conv1d(xs, sd[f"{p}.conv1d_x.weight"], padding="same", groups=h))
    z = F.silu(F.conv1d(z, sd[f"{p}.conv1d_z.weight"], padding="same", groups=h))
    x_dbl = xs.transpose(1, 2).reshape(-1, h) @ sd[f"{p}.x_proj.weight"].t()
    dt, b, c = torch.split(x_dbl, [rank, n, n], dim=-1)
    dt = F.linear(dt, sd[f"{p}.dt_proj.weight"], sd[f"{p}.dt_proj.bias"])  # with bias: nn.Linear dt_proj
    dt = dt.reshape(x.shape[0], length, h).transpose(1, 2)
    b = b.reshape(x.shape[0], length, n).transpose(1, 2)
    c = c.reshape(x.shape[0], length, n).transpose(1, 2)
    y = _reference_selective_scan(xs, dt, a, b, c, sd[f"{p}.D"].float(), sd[f"{p}.dt_proj.bias"].float())
    y, z = y.transpose(1, 2), z.transpose(1, 2)
    # mamba_ssm layernorm_gated.RMSNorm(norm_before_gate=True): rmsnorm(y) * weight * silu(z)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * sd[f"{p}.norm.weight"] * F.silu(z)
    return (y @ sd[f"{p}.out_proj.weight"].t()) * sd[f"{p}.scale"]


@pytest.mark.parametrize("kind", ["eva02", "clip"])
def test_converted_mvfusers_compute_the_reference_mvfuser_forward(kind):
    model = _fixture_model(kind, seed=3)
    state = to_reference(model, kind)
    converted = convert_release_state_dict(state, release_config(state, model.config))
    fresh = MFuser(release_config(state, model.config), model.text_encoder.token_ids).eval()
    fresh.load_state_dict({**converted, **{k: model.state_dict()[k] for k in NOT_IN_RELEASE}})
    x = torch.randn(2, 21, model.config.vlm_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = fresh.backbone.fusers[1](x)
        theirs = _reference_mvfuser(state, "backbone.adapter.1", x)
        assert theirs.abs().max() > 1e-4  # not a trivially zero comparison
        # relative to the output size (scale keeps fuser outputs small): a bias added once instead of twice is
        # off by ~4e-3 of it, float rounding by ~1e-7
        assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()
        ctx_in = torch.randn(2, 9, model.config.context_width)
        ours = fresh.context_decoder.layers[0].fuser(ctx_in)
        theirs = _reference_mvfuser(state, "context_decoder.decoder.0.cross_attn", ctx_in)
        assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_wrong_shape_names_file_key_and_both_shapes(release, tmp_path, capsys):
    kind, model, state, _, extra = release
    bad = dict(state)
    bad["decode_head.cls_embed.weight"] = torch.zeros(7, model.config.head_dim)
    with pytest.raises(CheckpointError, match=r"decode_head\.cls_embed\.weight.*expected shape \(20, 32\), "
                                              r"found \(7, 32\)"):
        convert_release_state_dict(bad, release_config(state, model.config), source="bad.pth")
    path = _save_release(bad, tmp_path / "bad.pth")
    argv = ["--release", str(path), "--preset", PRESETS[kind], "-o", str(tmp_path / "x.safetensors")]
    assert main(argv + (["--vlm", str(extra["vlm"])] if extra else [])) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "decode_head.cls_embed.weight" in err and "(7, 32)" in err


def test_unknown_and_missing_keys_are_errors(release):
    _, model, state, _, _ = release
    config = release_config(state, model.config)
    extra = {**state, "decode_head.conv_seg.weight": torch.zeros(19, 32, 1, 1)}
    with pytest.raises(CheckpointError, match=r"does not know.*decode_head\.conv_seg\.weight"):
        convert_release_state_dict(extra, config, source="x.pth")
    lacking = {k: v for k, v in state.items() if k != "backbone.adapter.2.D"}
    with pytest.raises(CheckpointError, match=r"get no value.*backbone\.fusers\.2\.D"):
        convert_release_state_dict(lacking, config, source="x.pth")


def test_release_of_another_vlm_is_refused(release, tmp_path, capsys):
    kind, _, _, path, _ = release
    other = "tiny-eva02" if kind != "eva02" else "tiny-clip"
    assert main(["--release", str(path), "--preset", other, "-o", str(tmp_path / "x.safetensors")]) == 2
    assert f"MFuser-{kind}" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("release", ["siglip"], indirect=True)
def test_siglip_release_needs_the_siglip_file_for_its_calibration(release, tmp_path, capsys):
    _, _, _, path, _ = release
    assert main(["--release", str(path), "--preset", "tiny-siglip", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "logit_scale" in capsys.readouterr().err


def test_truncated_release_names_the_file(release, tmp_path, capsys):
    _, _, _, path, _ = release
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main(["--release", str(cut), "--preset", "tiny-clip", "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert str(cut) in err and "truncated" in err


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    with evil.open("wb") as f:
        pickle.dump({"state_dict": {"gamma": _RunsCode(marker)}}, f)
    assert main(["--release", str(evil), "--preset", "tiny-clip", "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert str(evil) in err and "Refusing" in err
    assert not marker.exists()


def test_not_a_release_says_what_it_lacks(tmp_path, capsys):
    path = tmp_path / "dinov2.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 8)}, path)
    assert main(["--release", str(path), "--preset", "tiny-clip", "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not a released MFuser checkpoint" in err


def _encoder_files(model: MFuser, folder: Path) -> tuple[Path, Path]:
    """Meta DINOv2 .pth and an OpenAI-layout CLIP file holding ``model``'s encoders (plain CLIP, no fold)."""
    vfm = folder / "dinov2_vitl14_pretrain.pth"
    torch.save({**model.backbone.vfm.state_dict(), "mask_token": torch.zeros(1, model.config.vfm_dim)}, vfm)
    vlm = folder / "ViT-L-14-336px.pth"
    rows = model.config.text_context_length
    vision = {f"visual.{k}": v.clone() for k, v in _vision_reference(model, "clip").items()}
    torch.save({**vision, **{k: v.clone() for k, v in _text_reference(model, "clip", rows).items()}}, vlm)
    return vfm, vlm


def test_preset_plus_encoder_files_gives_an_untrained_model(tmp_path):
    model = _fixture_model("clip", seed=7)
    vfm, vlm = _encoder_files(model, tmp_path)
    out = tmp_path / "init.safetensors"
    assert main(["--preset", "tiny-clip", "--vfm", str(vfm), "--vlm", str(vlm), "-o", str(out)]) == 0
    loaded = load_model(out)
    assert read_model_metadata(out)["source"] == "pretrained-encoders"
    for prefix in ("backbone.vfm.", "backbone.vlm.", "text_encoder.tower."):
        for k, v in model.state_dict().items():
            if k.startswith(prefix):
                assert torch.equal(loaded.state_dict()[k], v), k
    assert not torch.equal(loaded.backbone.fusers[0].in_proj.weight, model.backbone.fusers[0].in_proj.weight)


def test_preset_without_encoder_files_is_refused(tmp_path, capsys):
    assert main(["--preset", "tiny-clip", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "--vfm" in capsys.readouterr().err


def test_training_checkpoint_plus_encoder_files_gives_the_trained_model(tmp_path):
    preset = tmp_path / "tiny-clip-frozen.yaml"
    preset.write_text(Path("config/presets/tiny-clip.yaml").read_text().replace("freeze_encoders: false",
                                                                                   "freeze_encoders: true"))
    torch.manual_seed(0)
    model = _perturb_(build_mfuser(load_model_config(preset)), seed=11)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("backbone.vfm.") for n in frozen)
    trainable = {k: v.clone() for k, v in model.state_dict().items() if k not in frozen}
    ckpt = tmp_path / "iter_20.pt"
    torch.save({"format": "mfuser-train/1", "iteration": 20, "model": trainable, "optimizer": {"state": {}},
                "config": {"iterations": 20}}, ckpt)
    vfm, vlm = _encoder_files(model, tmp_path)
    out = tmp_path / "trained.safetensors"
    args = ["--train-checkpoint", str(ckpt), "--preset", str(preset), "-o", str(out)]
    assert main([*args, "--vfm", str(vfm), "--vlm", str(vlm)]) == 0
    loaded = load_model(out).eval()
    with torch.no_grad():
        assert (loaded.predict(_images(64)) - model.predict(_images(64))).abs().max() <= 1e-6
    # without the encoder files the frozen weights are nowhere: a clear error
    assert main([*args, "-o", str(tmp_path / "y.safetensors")]) == 2


def test_text_length_mismatch_with_the_preset_is_reported(release):
    _, model, state, _, _ = release
    bad = {**state, "contexts": torch.zeros(1, model.config.num_context + 1, model.config.text_width)}
    with pytest.raises(CheckpointError, match="context vectors"):
        release_config(bad, model.config)


def test_siglip_tokenizer_folder_is_required_for_siglip_class_names():
    from mfuser_model.network.mfuser import tokenize_class_names as class_token_ids

    config = load_model_config("mfuser-siglip-large")
    with pytest.raises(ConfigError, match="spiece.model"):
        class_token_ids(config)


# Shapes the reference constructors give at full size (configs/mfuser/*.py, 512 crops), for the released files.
_FULL_SIZE = {
    "clip": {"backbone.positional_embedding": (32 * 32 + 1, 1024), "backbone.conv1.weight": (1024, 3, 16, 16),
             "backbone.proj": (1024, 768), "backbone.dinov2.pos_embed": (1, 32 * 32 + 1, 1024),
             "backbone.dinov2.patch_embed.proj.weight": (1024, 3, 16, 16),
             "text_encoder.positional_embedding": (10, 768),
             "text_encoder.text_projection": (768, 768), "contexts": (1, 5, 768), "gamma": (768,),
             "backbone.adapter_proj1.0.weight": (1024, 1024)},
    "eva02": {"backbone.pos_embed": (1, 36 * 36 + 1, 1024), "backbone.patch_embed.proj.weight": (1024, 3, 14, 14),
              "backbone.head.weight": (768, 1024), "backbone.dinov2.pos_embed": (1, 36 * 36 + 1, 1024),
              "backbone.blocks.0.mlp.w1.weight": (2730, 1024), "text_encoder.positional_embedding": (13, 768),
              "contexts": (1, 8, 768), "backbone.rope.freqs_cos": (36 * 36, 64)},
    "siglip": {"backbone.embeddings.position_embedding.weight": (32 * 32, 1024),
               "backbone.embeddings.patch_embedding.weight": (1024, 3, 16, 16),
               "text_encoder.embeddings.position_embedding.weight": (10, 1024),
               "text_encoder.embeddings.token_embedding.weight": (32000, 1024),
               "text_encoder.head.weight": (1024, 1024),
               "contexts": (1, 5, 1024), "backbone.head.attention.in_proj_weight": (3 * 1024, 1024)},
}
_FULL_SIZE_COMMON = {
    "backbone.adapter.0.in_proj.weight": (1024, 1024), "backbone.adapter.23.x_proj.weight": (64 + 32, 512),
    "backbone.adapter.0.A_log": (512, 16), "backbone.fpn1.0.weight": (2048, 2048, 2, 2),
    "context_decoder.decoder.0.cross_attn.x_proj.weight": (16 + 32, 128),
    "decode_head.pixel_decoder.input_convs.0.conv.weight": (256, 2048, 1, 1),
    "decode_head.pixel_decoder.encoder.layers.5.ffns.0.layers.0.0.weight": (2048, 256),
    "decode_head.transformer_decoder.layers.8.ffns.0.layers.0.0.weight": (2048, 256),
    "decode_head.cls_embed.weight": (20, 256), "decode_head.query_embed.weight": (19, 256),
}


@pytest.mark.parametrize("kind", ["clip", "eva02", "siglip"])
def test_full_size_presets_take_the_released_layout(kind):
    """The full presets at the released files' size: every key, reference shapes, no memory (meta tensors)."""
    preset = {"clip": "mfuser-clip-large", "eva02": "mfuser-eva02-large", "siglip": "mfuser-siglip-large"}[kind]
    config = load_model_config(preset)
    rows = config.name_length + config.num_context
    config_at_release = dataclasses.replace(config, text_context_length=rows)
    with torch.device("meta"):
        model = MFuser(config_at_release, torch.zeros(19, config.name_length, dtype=torch.long))
    state = to_reference(model, kind)
    assert set(state) == reference_keys(kind, config)
    for key, shape in {**_FULL_SIZE_COMMON, **_FULL_SIZE[kind]}.items():
        assert tuple(state[key].shape) == shape, key
    assert release_config(state, config) == config_at_release
    converted = convert_release_state_dict(state, config_at_release, source=f"{kind}-full.pth")
    assert set(converted) | set(NOT_IN_RELEASE) == set(model.state_dict())


def _is_encoder_key(key: str) -> bool:
    trained = ("backbone.adapter", "backbone.fpn")
    return key.startswith(("backbone.", "text_encoder.")) and not key.startswith(trained)


@pytest.mark.parametrize("release", ["clip", "eva02"], indirect=True)
def test_release_without_frozen_encoders_takes_them_from_the_pretrained_files(release, tmp_path, capsys):
    kind, model, state, _, _ = release
    path = _save_release({k: v for k, v in state.items() if not _is_encoder_key(k)}, tmp_path / "trained.pth")
    # the same encoders as public pretrained files: Meta DINOv2, OpenAI CLIP (text at the top level) / BAAI EVA-CLIP
    vfm = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save({k.removeprefix("backbone.dinov2."): v for k, v in state.items() if k.startswith("backbone.dinov2.")},
               vfm)
    vlm = tmp_path / "vlm.pt"
    text_prefix = "" if kind == "clip" else "text."
    vision = {f"visual.{k.removeprefix('backbone.')}": v for k, v in state.items()
              if _is_encoder_key(k) and k.startswith("backbone.") and not k.startswith("backbone.dinov2.")}
    text = {text_prefix + k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    torch.save({**vision, **text}, vlm)
    out = tmp_path / "converted.safetensors"
    base = ["--release", str(path), "--preset", PRESETS[kind], "-o", str(out)]
    assert main(base) == 2
    assert "--vfm" in capsys.readouterr().err
    assert main([*base, "--vfm", str(vfm), "--vlm", str(vlm)]) == 0
    loaded = load_model(out).eval()
    size = 56 if kind == "eva02" else 64
    with torch.no_grad():
        assert (loaded.predict(_images(size)) - model.predict(_images(size))).abs().max() <= 1e-6
