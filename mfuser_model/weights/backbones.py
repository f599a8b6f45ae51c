"""Converters from the public backbone checkpoints to the timm / open_clip modules MFuser uses as frozen encoders.

Pure functions in the style of timm's ``checkpoint_filter_fn``: take a flat state dict (from
:func:`mfuser_model.weights.io.read_state_dict`) and the target module (or its ``state_dict`` shapes), sniff the
source layout by marker keys, rename, and resample the position embedding / patch kernel to the target grid the
way the MFuser reference code does (``models/backbones/clip/models.py``, ``eva_clip/utils.py``,
``siglip/modeling_siglip.py``):

=========  ===============================  ==================================  ======================
encoder    position embedding               patch kernel                        text positions
=========  ===============================  ==================================  ======================
DINOv2     bicubic, CLS kept                bicubic (14 -> 16 for p16 pairings)  –
CLIP       bilinear, CLS kept               bilinear (14 -> 16)                 first N rows kept
EVA02      bicubic, CLS kept                bicubic                             first N rows kept
SigLIP     bilinear (no CLS)                bilinear                            first N rows kept
=========  ===============================  ==================================  ======================

All resizing is ``F.interpolate(..., align_corners=False)`` without antialiasing, as in the reference. Text
position tables are truncated to the target context length (the reference runs its text encoders at 10 or 13
tokens). Source keys that carry no weights (EVA RoPE tables, cached attention masks, HF ``position_ids``, DINOv2's
pre-training ``mask_token``) are dropped; keys the converters do not know pass through under their source name so
that :func:`~mfuser_model.weights.io.load_into` reports them instead of silently ignoring them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mfuser_model.errors import CheckpointError
from mfuser_model.weights.io import LoadReport, load_into, read_state_dict

__all__ = [
    "VLM_FAMILIES",
    "DinoFormat",
    "VlmFormat",
    "VlmLoadResult",
    "VlmWeights",
    "convert_dinov2",
    "convert_vlm",
    "detect_dinov2_format",
    "detect_vlm_format",
    "expected_shapes",
    "load_dinov2",
    "load_vlm",
    "resize_patch_kernel",
    "resize_pos_embed",
]

StateDict = dict[str, torch.Tensor]
Target = nn.Module | Mapping[str, torch.Size | tuple[int, ...]]
DinoFormat = Literal["dinov2-meta", "dinov2-timm", "dinov2-hf"]
VlmFormat = Literal[
    "eva02-baai", "eva02-openclip", "eva02-timm",
    "clip-openai", "clip-timm",
    "siglip-hf", "siglip-openclip", "siglip-timm",
]  # fmt: skip
VlmFamily = Literal["clip", "eva02", "siglip"]
VLM_FAMILIES: tuple[VlmFamily, ...] = ("clip", "eva02", "siglip")

# (position-embedding mode, patch-kernel mode) per encoder, as in the reference loaders.
_RESIZE_MODES: dict[str, tuple[str, str]] = {
    "dinov2": ("bicubic", "bicubic"),
    "clip": ("bilinear", "bilinear"),
    "eva02": ("bicubic", "bicubic"),
    "siglip": ("bilinear", "bilinear"),
}
# Non-weight entries some files carry: OpenAI's JIT hyper-parameters and logit scale live outside the towers.
_OPENAI_NON_TEXT = ("input_resolution", "context_length", "vocab_size", "logit_scale", "logit_bias")


@dataclass(frozen=True)
class VlmWeights:
    """A vision-language checkpoint split for the two towers.

    Attributes:
        vision: state dict for the timm vision model.
        text: state dict for the open_clip ``TextTransformer`` (empty if the file has no text tower).
        logit_scale: the contrastive temperature (log scale) if the file has one.
        logit_bias: SigLIP's logit bias if the file has one.
    """

    vision: StateDict
    text: StateDict
    logit_scale: torch.Tensor | None
    logit_bias: torch.Tensor | None


def expected_shapes(target: Target) -> dict[str, torch.Size]:
    """The ``{key: shape}`` a module's ``state_dict`` has (or the given mapping, normalised)."""
    if isinstance(target, nn.Module):
        return {k: v.shape for k, v in target.state_dict().items()}
    return {k: torch.Size(v) for k, v in target.items()}


# ---------------------------------------------------------------------------------------------------------------
# Resizing


def resize_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], *, num_prefix_tokens: int, mode: str
) -> torch.Tensor:
    """Resample an absolute position table ``(1, P + h*w, C)`` to ``(1, P + H*W, C)``; prefix rows are kept.

    Args:
        pos_embed: the table; the source grid must be square.
        new_grid: target ``(H, W)``.
        num_prefix_tokens: rows before the grid (1 for a CLS token, 0 for SigLIP).
        mode: ``"bicubic"`` or ``"bilinear"`` (``align_corners=False``, no antialias, as the reference).

    Returns:
        The table unchanged if the grid already fits, else a float32 table.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(grid.shape[1])
    if side * side != grid.shape[1]:
        msg = f"position table with {grid.shape[1]} grid rows is not a square grid"
        raise ValueError(msg)
    if (side, side) == tuple(new_grid):
        return pos_embed
    # Resampled in float32 and kept there (OpenAI's file is fp16; the reference calls .float() before resizing).
    dim = grid.shape[-1]
    maps = grid.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    maps = F.interpolate(maps, size=tuple(new_grid), mode=mode, align_corners=False)
    grid = maps.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix.float(), grid], dim=1)


def resize_patch_kernel(weight: torch.Tensor, size: tuple[int, int], *, mode: str) -> torch.Tensor:
    """Interpolate a patch-embedding kernel ``(C, 3, p, p)`` to ``(C, 3, *size)`` (the reference's 14 -> 16).

    Returns the kernel unchanged if it already has ``size``, else a float32 result.
    """
    if tuple(weight.shape[-2:]) == tuple(size):
        return weight
    return F.interpolate(weight.float(), size=tuple(size), mode=mode, align_corners=False)  # float32, as above


def _fit_vision(state: StateDict, shapes: Mapping[str, torch.Size], family: str) -> StateDict:
    pos_mode, patch_mode = _RESIZE_MODES[family]
    out = dict(state)
    kernel_key = "patch_embed.proj.weight"
    if kernel_key in out and kernel_key in shapes and out[kernel_key].ndim == 4:
        out[kernel_key] = resize_patch_kernel(out[kernel_key], tuple(shapes[kernel_key][-2:]), mode=patch_mode)
    if "pos_embed" in out and "pos_embed" in shapes and out["pos_embed"].shape != shapes["pos_embed"]:
        # timm keeps the CLS position inside pos_embed for these models (no_embed_class=False).
        prefix = 1 if "cls_token" in shapes else 0
        n_grid = shapes["pos_embed"][1] - prefix
        side = math.isqrt(n_grid)
        if side * side != n_grid or out["pos_embed"].ndim != 3 or out["pos_embed"].shape[-1] != shapes["pos_embed"][-1]:
            return out  # not resizable: load_into reports the shape mismatch with both shapes
        try:
            out["pos_embed"] = resize_pos_embed(out["pos_embed"], (side, side), num_prefix_tokens=prefix, mode=pos_mode)
        except ValueError:
            return out
    return out


def _fit_text(state: StateDict, shapes: Mapping[str, torch.Size]) -> StateDict:
    out = dict(state)
    key = "positional_embedding"
    if key in out and key in shapes and out[key].shape[0] > shapes[key][0]:
        # The reference runs the text encoders at a shorter context (10 / 13 tokens) with the first rows.
        out[key] = out[key][: shapes[key][0]]
    return out


# ---------------------------------------------------------------------------------------------------------------
# DINOv2


def detect_dinov2_format(state: Mapping[str, torch.Tensor]) -> DinoFormat:
    """Name the DINOv2 checkpoint layout by its marker keys.

    Raises:
        CheckpointError: no known DINOv2 layout matches.
    """
    keys = set(state)
    if {"embeddings.patch_embeddings.projection.weight", "dinov2.embeddings.patch_embeddings.projection.weight"} & keys:
        return "dinov2-hf"
    if "blocks.0.ls1.gamma" in keys or "blocks.0.attn.qkv.weight" in keys:
        return "dinov2-meta" if "mask_token" in keys else "dinov2-timm"
    msg = f"not a DINOv2 checkpoint (first keys: {sorted(keys)[:6]})"
    raise CheckpointError(msg)


def convert_dinov2(state: Mapping[str, torch.Tensor], target: Target) -> StateDict:
    """Convert a Meta / timm / Hugging Face DINOv2 state dict to a timm ``VisionTransformer``'s.

    Args:
        state: the source state dict (``dinov2_vitl14_pretrain.pth``, timm ``vit_large_patch14_dinov2`` files,
            or HF ``facebook/dinov2-large``).
        target: the timm model or its ``state_dict`` shapes; the position table and patch kernel are resampled
            (bicubic) to its grid and patch size.

    Returns:
        The state dict for the target.
    """
    if detect_dinov2_format(state) == "dinov2-hf":
        out = _dinov2_from_hf(state)
    else:  # Meta names equal timm's; the mask token only serves masked-image pre-training.
        out = {k: v for k, v in state.items() if k != "mask_token"}
    return _fit_vision(out, expected_shapes(target), "dinov2")


_HF_DINO_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def _dinov2_from_hf(state: Mapping[str, torch.Tensor]) -> StateDict:
    src = {k.removeprefix("dinov2."): v for k, v in state.items() if not k.startswith("classifier.")}
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in src.items():
        if key in ("embeddings.mask_token",):
            continue
        if key == "embeddings.cls_token":
            out["cls_token"] = value
        elif key == "embeddings.position_embeddings":
            out["pos_embed"] = value
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("layernorm."):
            out["norm." + key.rsplit(".", 1)[1]] = value
        elif m := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)", key):
            idx, name, kind = m.groups()
            if qm := re.fullmatch(r"attention\.attention\.(query|key|value)", name):
                qkv.setdefault((idx, kind), {})[qm.group(1)] = value
            elif sm := re.fullmatch(r"layer_scale([12])", name):
                out[f"blocks.{idx}.ls{sm.group(1)}.gamma"] = value
            elif name in _HF_DINO_BLOCK:
                out[f"blocks.{idx}.{_HF_DINO_BLOCK[name]}.{kind}"] = value
            else:
                out[key] = value
        else:
            out[key] = value
    out.update(_fuse_qkv(qkv, "blocks.{idx}.attn.qkv.{kind}", ("query", "key", "value")))
    return out


def _fuse_qkv(
    parts: Mapping[tuple[str, str], Mapping[str, torch.Tensor]], pattern: str, order: tuple[str, str, str]
) -> StateDict:
    out: StateDict = {}
    for (idx, kind), found in parts.items():
        missing = [p for p in order if p not in found]
        if missing:
            msg = f"layer {idx}: attention {kind} lacks {missing} (have {sorted(found)})"
            raise CheckpointError(msg)
        out[pattern.format(idx=idx, kind=kind)] = torch.cat([found[p] for p in order], dim=0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Vision-language models


# First match wins: open_clip files also hold timm keys under visual.trunk., so they are tested before timm's own.
_VLM_MARKERS: tuple[tuple[str, VlmFormat], ...] = (
    ("vision_model.embeddings.patch_embedding.weight", "siglip-hf"),
    ("visual.class_embedding", "clip-openai"),  # OpenAI's file, and open_clip's ViT-L-14-336 (same names)
    ("visual.trunk.attn_pool.latent", "siglip-openclip"),
    ("visual.trunk.blocks.0.attn.q_proj.weight", "eva02-openclip"),
    ("visual.blocks.0.attn.q_proj.weight", "eva02-baai"),
    ("visual.blocks.0.mlp.w1.weight", "eva02-baai"),
    ("attn_pool.latent", "siglip-timm"),
    ("blocks.0.attn.q_proj.weight", "eva02-timm"),
    ("norm_pre.weight", "clip-timm"),
)


def detect_vlm_format(state: Mapping[str, torch.Tensor]) -> VlmFormat:
    """Name a CLIP / EVA02-CLIP / SigLIP checkpoint layout by its marker keys.

    Raises:
        CheckpointError: no known layout matches.
    """
    keys = set(state)
    for marker, fmt in _VLM_MARKERS:
        if marker in keys and (fmt != "clip-timm" or "blocks.0.attn.qkv.weight" in keys):
            return fmt
    msg = f"not a known CLIP / EVA02 / SigLIP checkpoint (first keys: {sorted(keys)[:6]})"
    raise CheckpointError(msg)


_FAMILY_OF: dict[str, VlmFamily] = {
    "eva02-baai": "eva02",
    "eva02-openclip": "eva02",
    "eva02-timm": "eva02",
    "clip-openai": "clip",
    "clip-timm": "clip",
    "siglip-hf": "siglip",
    "siglip-openclip": "siglip",
    "siglip-timm": "siglip",
}


def convert_vlm(
    state: Mapping[str, torch.Tensor],
    vision_target: Target,
    text_target: Target | None = None,
    *,
    family: VlmFamily | None = None,
) -> VlmWeights:
    """Split and convert a CLIP / EVA02-CLIP / SigLIP checkpoint for a timm vision model and an open_clip text tower.

    Args:
        state: the source state dict (see :func:`detect_vlm_format` for the layouts).
        vision_target: the timm vision model (``vit_large_patch14_clip_quickgelu_336``,
            ``eva02_large_patch14_clip_336``, ``vit_large_patch16_siglip_384`` or a smaller twin) or its shapes.
        text_target: the open_clip ``TextTransformer`` or its shapes; text position rows are cut to its length.
        family: the expected family; a file of another family is an error.

    Returns:
        :class:`VlmWeights`.

    Raises:
        CheckpointError: unknown layout, or a file of another family than ``family``.
    """
    fmt = detect_vlm_format(state)
    found = _FAMILY_OF[fmt]
    if family is not None and found != family:
        msg = f"expected a {family} checkpoint, found layout {fmt!r}"
        raise CheckpointError(msg)
    converter: Callable[[Mapping[str, torch.Tensor]], tuple[StateDict, StateDict]] = _VLM_CONVERTERS[fmt]
    vision, text = converter(state)
    vision_shapes = expected_shapes(vision_target)
    if fmt == "clip-openai" and "head.bias" not in vision_shapes:
        vision.pop("head.bias", None)  # OpenAI's projection has no bias; timm's head has a zero one by default
    vision = _fit_vision(vision, vision_shapes, found)
    if text_target is not None:
        text = _fit_text(text, expected_shapes(text_target))
    return VlmWeights(vision, text, logit_scale=state.get("logit_scale"), logit_bias=state.get("logit_bias"))


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _drop_non_weights(state: StateDict) -> StateDict:
    # RoPE tables are recomputed by timm for the target grid; attention masks are rebuilt by open_clip.
    return {
        k: v
        for k, v in state.items()
        if not (k.split(".")[-1] in ("attn_mask", "position_ids") or k.startswith("rope.") or ".rope." in k)
    }


def _openclip_text(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Text tower of an open_clip-style file: ``text.*`` (custom_text / EVA-CLIP) or the CLIP top level."""
    if any(k.startswith("text.") for k in state):
        return _drop_non_weights(_strip(state, "text."))
    top = {k: v for k, v in state.items() if not k.startswith("visual.") and k not in _OPENAI_NON_TEXT}
    return _drop_non_weights(top)


# EVA-CLIP (BAAI) block names -> timm Eva names; SwiGLU w1 is the gate, w2 the value, w3 the output projection.
_EVA_RENAMES = (
    (re.compile(r"\.attn\.q_bias$"), ".attn.q_proj.bias"),
    (re.compile(r"\.attn\.v_bias$"), ".attn.v_proj.bias"),
    (re.compile(r"\.attn\.inner_attn_ln\."), ".attn.norm."),
    (re.compile(r"\.mlp\.ffn_ln\."), ".mlp.norm."),
    (re.compile(r"\.mlp\.w1\."), ".mlp.fc1_g."),
    (re.compile(r"\.mlp\.w2\."), ".mlp.fc1_x."),
    (re.compile(r"\.mlp\.w3\."), ".mlp.fc2."),
)


def _eva02_baai(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    vision: StateDict = {}
    for key, value in _drop_non_weights(_strip(state, "visual.")).items():
        name = key
        for pattern, repl in _EVA_RENAMES:
            name = pattern.sub(repl, name)
        vision[name] = value
    return vision, _openclip_text(state)


def _eva02_openclip(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    return _drop_non_weights(_strip(state, "visual.trunk.")), _openclip_text(state)


def _timm_only(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    return _drop_non_weights(dict(state)), {}


_OPENAI_SWAPS = (
    ("conv1.", "patch_embed.proj."),
    ("transformer.resblocks.", "blocks."),
    ("ln_pre.", "norm_pre."),
    ("ln_post.", "norm."),
    (".ln_1.", ".norm1."),
    (".ln_2.", ".norm2."),
    (".attn.in_proj_weight", ".attn.qkv.weight"),
    (".attn.in_proj_bias", ".attn.qkv.bias"),
    (".attn.out_proj.", ".attn.proj."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
)


def _clip_openai(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    vision: StateDict = {}
    for key, value in _drop_non_weights(_strip(state, "visual.")).items():
        if key == "class_embedding":
            vision["cls_token"] = value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            vision["pos_embed"] = value.unsqueeze(0)
        elif key == "proj":
            # OpenAI stores x @ proj with proj (width, embed); timm's head is a Linear (embed, width) + bias.
            vision["head.weight"] = value.t().contiguous()
            vision["head.bias"] = torch.zeros(value.shape[1], dtype=value.dtype)
        else:
            name = key
            for old, new in _OPENAI_SWAPS:
                # Leading-dot patterns are block-internal; the others only rename a top-level prefix.
                name = name.replace(old, new) if old.startswith(".") or name.startswith(old) else name
            vision[name] = value
    return vision, _openclip_text(state)


def _siglip_openclip(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    return _drop_non_weights(_strip(state, "visual.trunk.")), _openclip_text(state)


_HF_SIGLIP_LAYER = {
    "layer_norm1": ("norm1", "ln_1"),
    "layer_norm2": ("norm2", "ln_2"),
    "self_attn.out_proj": ("attn.proj", "attn.out_proj"),
    "mlp.fc1": ("mlp.fc1", "mlp.c_fc"),
    "mlp.fc2": ("mlp.fc2", "mlp.c_proj"),
}
_HF_SIGLIP_VISION = {
    "embeddings.patch_embedding": "patch_embed.proj",
    "post_layernorm": "norm",
    "head.attention.out_proj": "attn_pool.proj",
    "head.layernorm": "attn_pool.norm",
    "head.mlp.fc1": "attn_pool.mlp.fc1",
    "head.mlp.fc2": "attn_pool.mlp.fc2",
}
_HF_SIGLIP_TEXT = {
    "embeddings.token_embedding": "token_embedding",
    "final_layer_norm": "ln_final",
    "head": "text_projection",
}


def _siglip_hf_tower(state: StateDict, tower: Literal["vision", "text"]) -> StateDict:
    col = 0 if tower == "vision" else 1
    named = _HF_SIGLIP_VISION if tower == "vision" else _HF_SIGLIP_TEXT
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key == "embeddings.position_embedding.weight":
            out["pos_embed" if tower == "vision" else "positional_embedding"] = (
                value.unsqueeze(0) if tower == "vision" else value
            )
        elif key == "head.probe":
            out["attn_pool.latent"] = value
        elif m := re.fullmatch(r"head\.attention\.in_proj_(weight|bias)", key):
            # nn.MultiheadAttention packs q, k, v; timm's attention pool has q and a fused kv projection.
            dim = value.shape[0] // 3
            out[f"attn_pool.q.{m.group(1)}"] = value[:dim]
            out[f"attn_pool.kv.{m.group(1)}"] = value[dim:]
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            idx, name, kind = m.groups()
            if pm := re.fullmatch(r"self_attn\.(q|k|v)_proj", name):
                qkv.setdefault((idx, kind), {})[pm.group(1)] = value
            elif name in _HF_SIGLIP_LAYER:
                block = "blocks" if tower == "vision" else "transformer.resblocks"
                out[f"{block}.{idx}.{_HF_SIGLIP_LAYER[name][col]}.{kind}"] = value
            else:
                out[key] = value
        elif (stem := key.rsplit(".", 1)[0]) in named:
            out[f"{named[stem]}.{key.rsplit('.', 1)[1]}"] = value
        else:
            out[key] = value
    pattern = "blocks.{idx}.attn.qkv.{kind}" if tower == "vision" else "transformer.resblocks.{idx}.attn.in_proj_{kind}"
    out.update(_fuse_qkv(qkv, pattern, ("q", "k", "v")))
    return out


def _siglip_hf(state: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    return (
        _siglip_hf_tower(_strip(state, "vision_model."), "vision"),
        _siglip_hf_tower(_strip(state, "text_model."), "text"),
    )


_VLM_CONVERTERS: dict[str, Callable[[Mapping[str, torch.Tensor]], tuple[StateDict, StateDict]]] = {
    "eva02-baai": _eva02_baai,
    "eva02-openclip": _eva02_openclip,
    "eva02-timm": _timm_only,
    "clip-openai": _clip_openai,
    "clip-timm": _timm_only,
    "siglip-hf": _siglip_hf,
    "siglip-openclip": _siglip_openclip,
    "siglip-timm": _timm_only,
}


# ---------------------------------------------------------------------------------------------------------------
# File -> module


def load_dinov2(module: nn.Module, path: str | Path, *, allow_partial: bool = False) -> LoadReport:
    """Read a DINOv2 weight file, convert it for ``module`` (a timm ViT) and load it strictly.

    Raises:
        CheckpointError: unreadable file, unknown layout, or keys/shapes that do not fit (names the file).
    """
    state = read_state_dict(path)
    try:
        converted = convert_dinov2(state, module)
    except CheckpointError as err:
        msg = f"{path}: {err}"
        raise CheckpointError(msg) from err
    return load_into(module, converted, source=path, allow_partial=allow_partial)


@dataclass(frozen=True)
class VlmLoadResult:
    """Outcome of :func:`load_vlm`: the load reports and the file's logit scale / bias (if any)."""

    vision: LoadReport
    text: LoadReport | None
    logit_scale: torch.Tensor | None
    logit_bias: torch.Tensor | None


def load_vlm(
    family: VlmFamily,
    vision: nn.Module,
    text: nn.Module | None,
    path: str | Path,
    *,
    allow_partial: bool = False,
) -> VlmLoadResult:
    """Read a CLIP / EVA02-CLIP / SigLIP weight file and load its towers into ``vision`` and ``text``.

    Args:
        family: ``"clip"``, ``"eva02"`` or ``"siglip"``; a file of another family is an error.
        vision: the timm vision model.
        text: the open_clip text tower, or None to load the vision tower only.
        path: the weight file.
        allow_partial: let module keys absent from the file keep their values.

    Raises:
        CheckpointError: unreadable file, wrong family, no text tower in the file while ``text`` is given, or
            keys/shapes that do not fit (names the file, key and shapes).
    """
    if family not in VLM_FAMILIES:
        msg = f"unknown VLM family {family!r}; expected one of {VLM_FAMILIES}"
        raise CheckpointError(msg)
    state = read_state_dict(path)
    try:
        weights = convert_vlm(state, vision, text, family=family)
    except CheckpointError as err:
        msg = f"{path}: {err}"
        raise CheckpointError(msg) from err
    vision_report = load_into(vision, weights.vision, source=path, allow_partial=allow_partial)
    text_report = None
    if text is not None:
        if not weights.text:
            msg = f"{path} holds no text tower (layout {detect_vlm_format(state)!r}), but a text module was given."
            raise CheckpointError(msg)
        text_report = load_into(text, weights.text, source=path, allow_partial=allow_partial)
    return VlmLoadResult(vision_report, text_report, weights.logit_scale, weights.logit_bias)
