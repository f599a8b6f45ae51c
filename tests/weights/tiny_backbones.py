"""Tiny random encoders in the real key layouts, and independent reference forwards for the HF layouts."""

from __future__ import annotations

import math

import open_clip
import timm
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, _build_text_tower
from timm.models.vision_transformer import VisionTransformer
from torch import nn

WIDTH, HEADS, DEPTH, EMBED = 32, 2, 2, 24


@torch.no_grad()
def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Give every floating tensor random values of order one, so a wrong mapping cannot hide in tiny numbers."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32) * 0.3
            is_norm_gain = name.endswith("weight") and tensor.ndim == 1
            tensor.copy_(noise + 1.0 if is_norm_gain else noise)
    return module.eval()


def images(size: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def token_ids(length: int, vocab: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- DINOv2


def tiny_dinov2(img_size: int = 28, patch_size: int = 14, seed: int | None = None) -> VisionTransformer:
    """The project's DINOv2 layout (timm ViT, LayerScale, class token, no registers) at toy size."""
    model = VisionTransformer(
        img_size=img_size, patch_size=patch_size, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
        init_values=1e-5, num_classes=0, dynamic_img_size=True,
    )  # fmt: skip
    return randomize_(model, seed) if seed is not None else model.eval()


def hf_dinov2_state(img_size: int = 28, patch: int = 14, seed: int = 0, *, width: int = WIDTH, depth: int = DEPTH,
                    meta: bool = False) -> dict[str, torch.Tensor]:  # fmt: skip
    """Random weights with Hugging Face ``Dinov2Model`` names and shapes (transformers' modeling_dinov2).

    ``meta=True`` gives shape-only tensors, for checking the real-size layout without the memory.
    """
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, gain: bool = False) -> torch.Tensor:
        if meta:
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=gen) * 0.3 + (1.0 if gain else 0.0)

    n = (img_size // patch) ** 2
    sd = {
        "embeddings.cls_token": rnd(1, 1, width),
        "embeddings.mask_token": rnd(1, width),
        "embeddings.position_embeddings": rnd(1, n + 1, width),
        "embeddings.patch_embeddings.projection.weight": rnd(width, 3, patch, patch),
        "embeddings.patch_embeddings.projection.bias": rnd(width),
        "layernorm.weight": rnd(width, gain=True),
        "layernorm.bias": rnd(width),
    }
    for i in range(depth):
        p = f"encoder.layer.{i}."
        for name in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                     "attention.output.dense"):  # fmt: skip
            sd[p + name + ".weight"], sd[p + name + ".bias"] = rnd(width, width), rnd(width)
        for name in ("norm1", "norm2"):
            sd[p + name + ".weight"], sd[p + name + ".bias"] = rnd(width, gain=True), rnd(width)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rnd(4 * width, width), rnd(4 * width)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = rnd(width, 4 * width), rnd(width)
        sd[p + "layer_scale1.lambda1"], sd[p + "layer_scale2.lambda1"] = rnd(width), rnd(width)
    return sd


def _mha(x: torch.Tensor, sd: dict, p: str, q_in: torch.Tensor | None = None, names=("q_proj", "k_proj", "v_proj",
         "out_proj")) -> torch.Tensor:  # fmt: skip
    """Multi-head attention from separate q/k/v Linear weights, written out as in transformers."""
    q_in = x if q_in is None else q_in
    q = F.linear(q_in, sd[f"{p}{names[0]}.weight"], sd[f"{p}{names[0]}.bias"])
    k = F.linear(x, sd[f"{p}{names[1]}.weight"], sd[f"{p}{names[1]}.bias"])
    v = F.linear(x, sd[f"{p}{names[2]}.weight"], sd[f"{p}{names[2]}.bias"])
    b, nq, d = q.shape
    split = lambda t: t.reshape(b, t.shape[1], HEADS, d // HEADS).transpose(1, 2)  # noqa: E731
    attn = (split(q) @ split(k).transpose(-1, -2)) / math.sqrt(d // HEADS)
    out = (attn.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, nq, d)
    return F.linear(out, sd[f"{p}{names[3]}.weight"], sd[f"{p}{names[3]}.bias"])


def _ln(x: torch.Tensor, sd: dict, p: str, eps: float = 1e-6) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"], eps)


def hf_dinov2_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Dinov2Model.last_hidden_state (after the final layernorm), from the HF state dict alone."""
    w = sd["embeddings.patch_embeddings.projection.weight"]
    h = F.conv2d(x, w, sd["embeddings.patch_embeddings.projection.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    h = torch.cat([sd["embeddings.cls_token"].expand(x.shape[0], -1, -1), h], 1) + sd["embeddings.position_embeddings"]
    names = ("attention.attention.query", "attention.attention.key", "attention.attention.value",
             "attention.output.dense")  # fmt: skip
    for i in range(DEPTH):
        p = f"encoder.layer.{i}."
        h = h + sd[p + "layer_scale1.lambda1"] * _mha(_ln(h, sd, p + "norm1."), sd, p, names=names)
        mlp = F.linear(F.gelu(F.linear(_ln(h, sd, p + "norm2."), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                       sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])  # fmt: skip
        h = h + sd[p + "layer_scale2.lambda1"] * mlp
    return _ln(h, sd, "layernorm.")


# ---------------------------------------------------------------- SigLIP


def tiny_siglip_vision(img_size: int = 32, patch_size: int = 16, seed: int | None = None) -> nn.Module:
    """``vit_large_patch16_siglip_384`` at toy size, with SigLIP's tanh GELU."""
    model = timm.create_model(
        "vit_large_patch16_siglip_384", pretrained=False, img_size=img_size, patch_size=patch_size,
        embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, act_layer="gelu_tanh",
    )  # fmt: skip
    return randomize_(model, seed) if seed is not None else model.eval()


def siglip_text_cfg(context_length: int = 8, vocab: int = 40) -> dict:
    cfg = dict(open_clip.get_model_config("ViT-L-16-SigLIP-384")["text_cfg"])
    cfg.update(width=WIDTH, heads=HEADS, layers=DEPTH, context_length=context_length, vocab_size=vocab,
               act_kwargs={"approximate": "tanh"})  # fmt: skip
    return cfg


def tiny_siglip_text(context_length: int = 8, seed: int | None = None) -> nn.Module:
    model = _build_text_tower(EMBED, siglip_text_cfg(context_length), quick_gelu=False, cast_dtype=None)
    return randomize_(model, seed) if seed is not None else model.eval()


def hf_siglip_state(img_size: int = 32, patch: int = 16, context: int = 8, vocab: int = 40, seed: int = 0, *,
                    width: int = WIDTH, depth: int = DEPTH, embed: int = EMBED,
                    meta: bool = False) -> dict[str, torch.Tensor]:  # fmt: skip
    """Random weights with Hugging Face ``SiglipModel`` names and shapes (transformers' modeling_siglip)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, gain: bool = False) -> torch.Tensor:
        if meta:
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=gen) * 0.3 + (1.0 if gain else 0.0)

    def layers(prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(depth):
            p = f"{prefix}encoder.layers.{i}."
            for name in ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj"):
                out[p + name + ".weight"], out[p + name + ".bias"] = rnd(width, width), rnd(width)
            for name in ("layer_norm1", "layer_norm2"):
                out[p + name + ".weight"], out[p + name + ".bias"] = rnd(width, gain=True), rnd(width)
            out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = rnd(4 * width, width), rnd(4 * width)
            out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = rnd(width, 4 * width), rnd(width)
        return out

    v, t = "vision_model.", "text_model."
    sd = {
        "logit_scale": torch.tensor([2.3]),
        "logit_bias": torch.tensor([-10.0]),
        v + "embeddings.patch_embedding.weight": rnd(width, 3, patch, patch),
        v + "embeddings.patch_embedding.bias": rnd(width),
        v + "embeddings.position_embedding.weight": rnd((img_size // patch) ** 2, width),
        v + "post_layernorm.weight": rnd(width, gain=True),
        v + "post_layernorm.bias": rnd(width),
        v + "head.probe": rnd(1, 1, width),
        v + "head.attention.in_proj_weight": rnd(3 * width, width),
        v + "head.attention.in_proj_bias": rnd(3 * width),
        v + "head.attention.out_proj.weight": rnd(width, width),
        v + "head.attention.out_proj.bias": rnd(width),
        v + "head.layernorm.weight": rnd(width, gain=True),
        v + "head.layernorm.bias": rnd(width),
        v + "head.mlp.fc1.weight": rnd(4 * width, width),
        v + "head.mlp.fc1.bias": rnd(4 * width),
        v + "head.mlp.fc2.weight": rnd(width, 4 * width),
        v + "head.mlp.fc2.bias": rnd(width),
        t + "embeddings.token_embedding.weight": rnd(vocab, width),
        t + "embeddings.position_embedding.weight": rnd(context, width),
        t + "final_layer_norm.weight": rnd(width, gain=True),
        t + "final_layer_norm.bias": rnd(width),
        t + "head.weight": rnd(embed, width),
        t + "head.bias": rnd(embed),
    }
    sd.update(layers(v))
    sd.update(layers(t))
    return sd


def _siglip_encoder(h: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    for i in range(DEPTH):
        p = f"{prefix}encoder.layers.{i}."
        h = h + _mha(_ln(h, sd, p + "layer_norm1."), sd, p + "self_attn.")
        hidden = F.gelu(F.linear(_ln(h, sd, p + "layer_norm2."), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]),
                        approximate="tanh")  # fmt: skip
        h = h + F.linear(hidden, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return h


def hf_siglip_vision_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SiglipVisionTransformer: (last_hidden_state after post_layernorm, pooler_output of the probe head)."""
    v = "vision_model."
    w = sd[v + "embeddings.patch_embedding.weight"]
    h = F.conv2d(x, w, sd[v + "embeddings.patch_embedding.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    h = _siglip_encoder(h + sd[v + "embeddings.position_embedding.weight"], sd, v)
    h = _ln(h, sd, v + "post_layernorm.")
    # SiglipMultiheadAttentionPoolingHead: nn.MultiheadAttention(probe, h, h) with packed in_proj weights.
    d = h.shape[-1]
    w_in, b_in = sd[v + "head.attention.in_proj_weight"], sd[v + "head.attention.in_proj_bias"]
    head_sd = {
        "q.weight": w_in[:d], "q.bias": b_in[:d], "k.weight": w_in[d : 2 * d], "k.bias": b_in[d : 2 * d],
        "v.weight": w_in[2 * d :], "v.bias": b_in[2 * d :],
        "o.weight": sd[v + "head.attention.out_proj.weight"], "o.bias": sd[v + "head.attention.out_proj.bias"],
    }  # fmt: skip
    probe = sd[v + "head.probe"].expand(x.shape[0], -1, -1)
    pooled = _mha(h, head_sd, "", q_in=probe, names=("q", "k", "v", "o"))
    hidden = F.gelu(F.linear(_ln(pooled, sd, v + "head.layernorm."), sd[v + "head.mlp.fc1.weight"],
                             sd[v + "head.mlp.fc1.bias"]), approximate="tanh")  # fmt: skip
    pooled = pooled + F.linear(hidden, sd[v + "head.mlp.fc2.weight"], sd[v + "head.mlp.fc2.bias"])
    return h, pooled[:, 0]


def hf_siglip_text_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """SiglipTextTransformer pooler_output after its head: bidirectional, pooled at the last position."""
    t = "text_model."
    h = sd[t + "embeddings.token_embedding.weight"][ids]
    h = h + sd[t + "embeddings.position_embedding.weight"][: ids.shape[1]]
    h = _ln(_siglip_encoder(h, sd, t), sd, t + "final_layer_norm.")
    return F.linear(h[:, -1], sd[t + "head.weight"], sd[t + "head.bias"])


# ---------------------------------------------------------------- CLIP / EVA02


def clip_text_cfg(context_length: int = 7, vocab: int = 50) -> dict:
    return {"context_length": context_length, "vocab_size": vocab, "width": WIDTH, "heads": HEADS, "layers": DEPTH}


def tiny_openai_clip(seed: int = 0, context_length: int = 7) -> CLIP:
    """An open_clip ``CLIP`` with QuickGELU: its state dict keys are exactly OpenAI's ``ViT-L-14-336px.pt`` names."""
    vision_cfg = {"image_size": 28, "layers": DEPTH, "width": WIDTH, "patch_size": 14, "head_width": WIDTH // HEADS}
    model = CLIP(embed_dim=EMBED, vision_cfg=vision_cfg, text_cfg=clip_text_cfg(context_length), quick_gelu=True)
    return randomize_(model, seed)


def tiny_clip_vision(img_size: int = 28, patch_size: int = 14, seed: int | None = None) -> nn.Module:
    """``vit_large_patch14_clip_quickgelu_336`` at toy size: pre-norm, QuickGELU, head = visual projection."""
    model = timm.create_model(
        "vit_large_patch14_clip_quickgelu_336", pretrained=False, img_size=img_size, patch_size=patch_size,
        embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=EMBED,
    )  # fmt: skip
    return randomize_(model, seed) if seed is not None else model.eval()


def tiny_text(cfg: dict, quick_gelu: bool, seed: int | None = None) -> nn.Module:
    model = _build_text_tower(EMBED, cfg, quick_gelu=quick_gelu, cast_dtype=None)
    return randomize_(model, seed) if seed is not None else model.eval()


def tiny_eva(img_size: int = 28, seed: int | None = None) -> nn.Module:
    """``eva02_large_patch14_clip_336`` at toy size (SwiGLU + sub-LN + RoPE), head = the CLIP projection."""
    model = timm.create_model(
        "eva02_large_patch14_clip_336", pretrained=False, img_size=img_size, embed_dim=WIDTH, depth=DEPTH,
        num_heads=HEADS, num_classes=EMBED,
    )  # fmt: skip
    return randomize_(model, seed) if seed is not None else model.eval()


def eva_to_baai(timm_state: dict[str, torch.Tensor], text_state: dict[str, torch.Tensor], grid: int,
                depth: int = DEPTH, head_dim: int = WIDTH // HEADS) -> dict[str, torch.Tensor]:  # fmt: skip
    """Write a timm Eva + open_clip text state dict with BAAI EVA-CLIP's names (eva_vit_model.py / transformer.py).

    EVA-CLIP keeps q/k/v as bias-free Linears plus q_bias/v_bias, names the sub-LNs inner_attn_ln / ffn_ln, the
    SwiGLU Linears w1 (gate), w2 (value), w3 (out), and stores RoPE tables as buffers in every block.
    """
    renames = [("attn.q_proj.bias", "attn.q_bias"), ("attn.v_proj.bias", "attn.v_bias"),
               ("attn.norm.", "attn.inner_attn_ln."), ("mlp.norm.", "mlp.ffn_ln."), ("mlp.fc1_g.", "mlp.w1."),
               ("mlp.fc1_x.", "mlp.w2."), ("mlp.fc2.", "mlp.w3.")]  # fmt: skip
    out = {}
    for key, value in timm_state.items():
        for old, new in renames:
            key = key.replace(old, new)  # noqa: PLW2901
        out["visual." + key] = value
    rope = torch.randn(grid * grid, head_dim)
    out["visual.rope.freqs_cos"], out["visual.rope.freqs_sin"] = rope, rope
    for i in range(depth):
        out[f"visual.blocks.{i}.attn.rope.freqs_cos"] = rope
    out.update({"text." + k: v for k, v in text_state.items()})
    out["logit_scale"] = torch.tensor(4.6)
    return out
