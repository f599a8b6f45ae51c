"""The authors' released MFuser checkpoints -> this project's MFuser state dict.

"Mamba as a Bridge: Where Vision Foundation Models Meet Vision Language Models for Domain-Generalized
Semantic Segmentation", Zhang et al., CVPR 2025 - https://arxiv.org/abs/2504.03193

The six released files ({CLIP, EVA02, SigLIP} x {GTAV, Cityscapes}) are mmseg checkpoints,
``{"meta": ..., "state_dict": ...}``, holding the *whole* segmentor state dict of the reference code
(``models/segmentors/mfuser_{clip,eva_clip,siglip}.py``): mmseg's ``save_checkpoint`` writes
``model.state_dict()``, so the frozen encoders are in the file too. Top-level names:

- ``backbone.*``: the fused ViT: the VLM vision tower in its own names (OpenAI CLIP ``conv1``/``transformer``...,
  BAAI EVA-CLIP ``patch_embed``/``blocks``..., Hugging Face SigLIP ``embeddings``/``encoder``...), ``dinov2.*``
  (Meta DINOv2 names), ``adapter.{i}`` (24 MVFusers), ``adapter_proj1/2/3`` (CLIP; SigLIP builds them but never
  uses them) and the pyramid ``fpn1``/``fpn2``.
- ``text_encoder.*``: the text tower (OpenAI / EVA-CLIP / HF SigLIP names), positions cut to the prompt length.
- ``contexts``, ``gamma``, ``context_decoder.*`` (``ContextDecoder`` with ``MTEnhancer`` layers),
  ``decode_head.*`` (``tqdmHead``: mmcv ``ConvModule``/``MultiScaleDeformableAttention``/``MultiheadAttention``/
  ``FFN`` names), and EVA's unused ``random_text``.

Encoder parts are renamed into the public checkpoint layouts and handed to the backbone converters
(:mod:`mfuser_model.weights.backbones`); everything trained by MFuser is mapped here. A release saved without its
frozen encoders (if the authors stripped them) converts too: :func:`model_from_release` then loads DINOv2 and the VLM
from their pretrained files. Numbers are copied as stored, because the project's modules compute what the
reference computes with the reference's own parameters:

1. MVFuser delta bias: the reference applies ``dt_proj`` *with* its bias and passes the bias again as the scan's
   ``delta_bias`` (its step is ``softplus(W dt + 2 b)``); :class:`~mfuser_model.network.mvfuser.MVFuser` does the same.
2. CLIP class token: the reference adds ``class_embedding`` to the CLS token and again to its position row;
   the project's CLIP stream (:class:`~mfuser_model.network.encoders.TokenStream`) adds it twice too.
3. MVFuser ``scale`` is a 0-d tensor in the reference and a ``(1,)`` tensor here (reshaped).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from mfuser_model.checkpoint import load_state_dict_strict
from mfuser_model.config import ModelConfig
from mfuser_model.errors import CheckpointError, ConfigError
from mfuser_model.network.encoders import VLMKind
from mfuser_model.network.mfuser import MFuser, build_mfuser, tokenize_class_names
from mfuser_model.weights.backbones import convert_dinov2, convert_vlm, load_dinov2, load_vlm
from mfuser_model.weights.io import read_state_dict

__all__ = [
    "NOT_IN_RELEASE",
    "convert_release_state_dict",
    "detect_release_variant",
    "expected_model_shapes",
    "model_from_release",
    "read_release",
    "release_config",
    "release_parts",
    "unused_release_keys",
]

_log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

# Entries of this project's MFuser that no released file holds: the class-name token ids (the reference
# tokenizes at construction and keeps them as a plain attribute) and the score-map calibration (1/0.07 for
# CLIP / EVA02; SigLIP's logit scale and bias are read from siglip_vitl16_384.pth at construction).
NOT_IN_RELEASE = ("text_encoder.token_ids", "logit_scale", "logit_bias")

# Marker keys of each reference backbone (first match wins).
_VARIANT_MARKERS: tuple[tuple[str, VLMKind], ...] = (
    ("backbone.class_embedding", "clip"),
    ("backbone.blocks.0.attn.q_proj.weight", "eva02"),
    ("backbone.embeddings.patch_embedding.weight", "siglip"),
)
_MFUSER_MARKERS = ("backbone.adapter.0.in_proj.weight", "decode_head.cls_embed.weight", "contexts")

# MVFuser (eva_clip/adapter_module.py) parameter -> this project's name. Conv biases do not exist there
# (``bias=conv_bias // 2`` is 0), so a file that has them is not the reference code's.
_MVFUSER_NAMES = {
    "in_proj.weight": "in_proj.weight",
    "conv1d_x.weight": "conv_x.weight",
    "conv1d_z.weight": "conv_z.weight",
    "x_proj.weight": "x_proj.weight",
    "dt_proj.weight": "dt_proj.weight",
    "dt_proj.bias": "dt_proj.bias",
    "A_log": "A_log",
    "D": "D",
    "norm.weight": "norm.weight",
    "out_proj.weight": "out_proj.weight",
    "scale": "scale",
}

# MTEnhancer (clip/models.py) sub-modules -> this project's names.
_MTENHANCER_NAMES = {
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.proj": "attn_proj",
    "norm1": "norm1",
    "norm2": "norm2",
    "norm3": "norm3",
    "mlp.0": "mlp.0",
    "mlp.3": "mlp.3",
}

# mmcv BaseTransformerLayer children of a tqdm pixel-decoder encoder layer, in operation order
# ('self_attn', 'norm', 'cross_attn', 'norm', 'ffn', 'norm'): attentions.0 = MultiScaleDeformableAttention,
# attentions.1 = MultiheadAttention (``attn`` wraps nn.MultiheadAttention), FFN = layers.0.0 / layers.1.
_PIXEL_LAYER_NAMES = {
    "attentions.0.sampling_offsets": "self_attn.sampling_offsets",
    "attentions.0.attention_weights": "self_attn.attention_weights",
    "attentions.0.value_proj": "self_attn.value_proj",
    "attentions.0.output_proj": "self_attn.output_proj",
    "norms.0": "norm1",
    "attentions.1.attn.in_proj_weight": "cross_attn.in_proj_weight",
    "attentions.1.attn.in_proj_bias": "cross_attn.in_proj_bias",
    "attentions.1.attn.out_proj": "cross_attn.out_proj",
    "norms.1": "norm2",
    "ffns.0.layers.0.0": "ffn.fc1",
    "ffns.0.layers.1": "ffn.fc2",
    "norms.2": "norm3",
}
# Transformer-decoder layers run ('cross_attn', 'norm', 'self_attn', 'norm', 'ffn', 'norm'), so attentions.0 is
# the masked cross-attention and attentions.1 the self-attention.
_DECODER_LAYER_NAMES = {
    "attentions.0.attn.in_proj_weight": "cross_attn.in_proj_weight",
    "attentions.0.attn.in_proj_bias": "cross_attn.in_proj_bias",
    "attentions.0.attn.out_proj": "cross_attn.out_proj",
    "norms.0": "norm1",
    "attentions.1.attn.in_proj_weight": "self_attn.in_proj_weight",
    "attentions.1.attn.in_proj_bias": "self_attn.in_proj_bias",
    "attentions.1.attn.out_proj": "self_attn.out_proj",
    "norms.1": "norm2",
    "ffns.0.layers.0.0": "ffn.fc1",
    "ffns.0.layers.1": "ffn.fc2",
    "norms.2": "norm3",
}
# tqdmHead / tqdmMSDeformAttnPixelDecoder modules whose names carry over unchanged.
_HEAD_SAME = ("query_embed", "level_embed", "text_proj.0", "text_proj.2", "cls_embed", "mask_embed.0",
              "mask_embed.2", "mask_embed.4")
_PIXEL_SAME_PREFIXES = ("input_convs.", "lateral_convs.", "output_convs.", "mask_feature.", "level_encoding.",
                        "text_proj.", "text_pos_embed.")


def detect_release_variant(state: Mapping[str, torch.Tensor], default: VLMKind | None = None) -> VLMKind:
    """Name the VLM of a released MFuser state dict (``clip``, ``eva02`` or ``siglip``).

    The VLM's own weights name it. A file without them (frozen encoders stripped) is taken to be ``default`` if
    its trained parts agree: EVA02 segmentors have ``random_text`` and no ``adapter_proj``, the others the reverse.

    Raises:
        CheckpointError: the dict is not a reference MFuser segmentor state dict, or its VLM cannot be named.
    """
    _check_is_release(state)
    for marker, kind in _VARIANT_MARKERS:
        if marker in state:
            return kind
    eva_like = "random_text" in state and "backbone.adapter_proj3.weight" not in state
    if default is not None and eva_like == (default == "eva02"):
        return default
    msg = ("released MFuser checkpoint without VLM weights (no CLIP, EVA02 or SigLIP marker key)"
           + ("" if default is None else f" whose trained parts do not fit an MFuser-{default} model"))
    raise CheckpointError(msg)


def _check_is_release(state: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k in _MFUSER_MARKERS if k not in state]
    if missing:
        msg = (f"not a released MFuser checkpoint: lacks {missing} (first keys: {sorted(state)[:5]}); expected the "
               "reference segmentor's state dict (backbone.*, text_encoder.*, contexts, decode_head.*)")
        raise CheckpointError(msg)


def release_parts(state: Mapping[str, torch.Tensor]) -> dict[str, bool]:
    """Which frozen encoders a release holds: ``{"vfm": ..., "vlm_vision": ..., "vlm_text": ...}``."""
    return {"vfm": any(k.startswith("backbone.dinov2.") for k in state),
            "vlm_vision": any(marker in state for marker, _ in _VARIANT_MARKERS),
            "vlm_text": any(k.startswith("text_encoder.") for k in state)}


def read_release(path: str | Path) -> StateDict:
    """Read a released ``.pth`` (``torch.load(weights_only=True)``; no code runs) and check that it is one.

    Raises:
        CheckpointError: missing/truncated/unsafe file, or not a released MFuser checkpoint (names the file).
    """
    state = read_state_dict(path)
    try:
        _check_is_release(state)
    except CheckpointError as err:
        msg = f"{path}: {err}"
        raise CheckpointError(msg) from None
    return state


def unused_release_keys(state: Mapping[str, torch.Tensor], kind: VLMKind | None = None) -> dict[str, str]:
    """Keys of a release that carry nothing this project's model uses, each with the reason it is dropped."""
    kind = detect_release_variant(state, kind)
    out: dict[str, str] = {}
    for key in state:
        if kind == "siglip" and key.startswith(("backbone.adapter_proj1.", "backbone.adapter_proj2.",
                                                "backbone.adapter_proj3.")):
            out[key] = "SigLIP's adapter_proj1/2/3 are built and trained but never used in the reference forward"
        elif kind == "eva02" and key == "random_text":
            out[key] = "EVA02 segmentor's random_text is a trainable parameter the reference never reads"
        elif key == "backbone.dinov2.mask_token":
            out[key] = "DINOv2's mask token serves masked pre-training only"
        elif kind == "eva02" and (key.startswith("backbone.rope.") or re.fullmatch(r"backbone\.blocks\.\d+\.attn"
                                                                                    r"\.rope\.freqs_(cos|sin)", key)):
            out[key] = "EVA RoPE tables are recomputed from the token grid (timm Eva)"
    return out


def release_config(state: Mapping[str, torch.Tensor], config: ModelConfig) -> ModelConfig:
    """The preset ``config`` with the text lengths the release was trained with (checked against the preset).

    The reference cuts the text positions to the prompt length (T + P = 10 for CLIP/SigLIP, 13 for EVA02); the
    converted model stores exactly those rows (``text_context_length``).

    Raises:
        CheckpointError: the release is of another VLM than ``config``, or its prompt lengths disagree.
    """
    kind = detect_release_variant(state, config.vlm)
    if kind != config.vlm:
        msg = f"the release holds an MFuser-{kind} model, but preset {config.name!r} is MFuser-{config.vlm}"
        raise CheckpointError(msg)
    pos_key = ("text_encoder.embeddings.position_embedding.weight" if kind == "siglip"
               else "text_encoder.positional_embedding")
    prompt = int(state["contexts"].shape[1])
    # Without the text tower in the file, the prompt length is the reference's: P contexts + T name tokens.
    rows = int(state[pos_key].shape[0]) if pos_key in state else prompt + config.name_length
    if prompt != config.num_context:
        msg = (f"key 'contexts': the release learned {prompt} context vectors, preset {config.name!r} expects "
               f"num_context={config.num_context}")
        raise CheckpointError(msg)
    if rows - prompt != config.name_length:
        msg = (f"key {pos_key!r}: {rows} text positions minus {prompt} contexts = {rows - prompt} name tokens, "
               f"preset {config.name!r} expects name_length={config.name_length}")
        raise CheckpointError(msg)
    return dataclasses.replace(config, text_context_length=rows)


def expected_model_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """``{key: shape}`` of the state dict of an MFuser built from ``config`` (built on the meta device)."""
    with torch.device("meta"):
        model = MFuser(config, torch.zeros(config.num_classes, config.name_length, dtype=torch.long))
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_release_state_dict(state_dict: Mapping[str, torch.Tensor], config: ModelConfig, *,
                               source: str | Path = "release", provided: frozenset[str] = frozenset()) -> StateDict:
    """Map every key of a released MFuser state dict to this project's MFuser names.

    Pure: reads ``state_dict`` only. Reference-only entries (:func:`unused_release_keys`) are dropped and logged;
    any other key the mapping does not know is an error, and so is a model key left without a value (except
    :data:`NOT_IN_RELEASE`, which the caller supplies).

    Args:
        state_dict: the released ``state_dict`` (keys ``backbone.*``, ``text_encoder.*``, ...).
        config: the model config; use :func:`release_config` to take the release's text length.
        source: file name for messages.
        provided: model keys the caller fills from elsewhere (encoders from their pretrained files when the
            release was saved without them); they may be absent from the release.

    Returns:
        The state dict for ``MFuser(config, ...)`` without the :data:`NOT_IN_RELEASE` keys.

    Raises:
        CheckpointError: not a release, another VLM than ``config``, unknown or missing keys, or a shape that does
            not fit (message names the key, the expected and the found shape).
    """
    kind = _checked_variant(state_dict, config, source)
    shapes = expected_model_shapes(config)
    dropped = unused_release_keys(state_dict, kind)
    by_reason: dict[str, list[str]] = {}
    for key, why in sorted(dropped.items()):
        by_reason.setdefault(why, []).append(key)
    for why, keys in by_reason.items():
        _log.info("%s: dropping %d key(s) %s: %s", source, len(keys), _listing(keys, limit=3), why)

    groups: dict[str, StateDict] = {"dinov2": {}, "vision": {}, "text": {}}
    out: StateDict = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key in dropped:
            continue
        mapped = _map_trained(key, value, kind)
        if mapped is not None:
            out[mapped[0]] = mapped[1]
            origin[mapped[0]] = key
        elif key.startswith("backbone.dinov2."):
            groups["dinov2"][key.removeprefix("backbone.dinov2.")] = value
        elif key.startswith(_TRAINED_PREFIXES):
            unknown.append(key)
        elif key.startswith("backbone."):
            groups["vision"][key.removeprefix("backbone.")] = value
        elif key.startswith("text_encoder."):
            groups["text"][key.removeprefix("text_encoder.")] = value
        else:
            unknown.append(key)
    if unknown:
        msg = f"{source}: {len(unknown)} keys the MFuser-{kind} conversion does not know: {_listing(unknown)}"
        raise CheckpointError(msg)

    for key, value in _convert_encoders(groups, kind, shapes, source).items():
        out[key] = value
        origin[key] = "the release's encoder weights"
    _check(out, shapes, origin, source, provided)
    return out


def _checked_variant(state: Mapping[str, torch.Tensor], config: ModelConfig, source: str | Path) -> VLMKind:
    try:
        kind = detect_release_variant(state, config.vlm)
    except CheckpointError as err:
        msg = f"{source}: {err}"
        raise CheckpointError(msg) from None
    if kind != config.vlm:
        msg = f"{source}: holds an MFuser-{kind} model, but the config {config.name!r} is MFuser-{config.vlm}"
        raise CheckpointError(msg)
    return kind


def model_from_release(path: str | Path, config: ModelConfig, *, tokenizer_dir: str | Path | None = None,
                       vlm_file: str | Path | None = None, vfm_file: str | Path | None = None) -> MFuser:
    """Build an MFuser holding a released checkpoint's weights, ready for :func:`~mfuser_model.checkpoint.save_model`.

    Args:
        path: the released ``.pth``.
        config: the preset of the same VLM (its text length is taken from the release, see :func:`release_config`).
        tokenizer_dir: SigLIP only: folder with the tokenizer files (see ``tokenize_class_names``).
        vlm_file: the pretrained VLM file (``ViT-L-14-336px.pt``, ``EVA02_CLIP_L_336_psz14_s6B.pt``,
            ``siglip_vitl16_384.pth`` or their public twins). Needed for SigLIP, whose ``logit_scale`` /
            ``logit_bias`` the reference reads from it, and for a release saved without its frozen VLM.
        vfm_file: the DINOv2 file, needed only for a release saved without its frozen DINOv2.

    Raises:
        CheckpointError: unreadable or unsafe file, wrong variant, keys or shapes that do not fit.
        ConfigError: a needed ``vlm_file`` / ``vfm_file`` / SigLIP tokenizer is not given.
    """
    state = read_release(path)
    config = release_config(state, config)
    parts = release_parts(state)
    model = build_mfuser(config, token_ids=tokenize_class_names(config, tokenizer_dir))
    provided = _load_absent_encoders(model, parts, path, vfm_file, vlm_file)
    converted = convert_release_state_dict(state, config, source=path, provided=frozenset(provided))
    current = model.state_dict()
    full = {**{k: current[k] for k in provided}, **converted, **_calibration(config, vlm_file)}
    for key in NOT_IN_RELEASE:  # token ids as built; CLIP / EVA02 score maps are cos / 0.07 (the model default)
        full.setdefault(key, current[key])
    load_state_dict_strict(model, full, path)
    return model


def _load_absent_encoders(model: MFuser, parts: Mapping[str, bool], path: str | Path,
                          vfm_file: str | Path | None, vlm_file: str | Path | None) -> set[str]:
    """Load the encoders a release lacks from their pretrained files; returns the model keys filled."""
    filled: set[str] = set()
    if not parts["vfm"]:
        if vfm_file is None:
            msg = f"{path} holds no DINOv2 weights (backbone.dinov2.*): pass the DINOv2 file as --vfm"
            raise ConfigError(msg)
        _log.info("%s: no DINOv2 weights in the release; loading them from %s", path, vfm_file)
        load_dinov2(model.backbone.vfm, vfm_file)
        filled |= {f"backbone.vfm.{k}" for k in model.backbone.vfm.state_dict()}
    if not parts["vlm_vision"]:
        if vlm_file is None:
            msg = f"{path} holds no {model.config.vlm} vision weights: pass the pretrained VLM file as --vlm"
            raise ConfigError(msg)
        _log.info("%s: no VLM weights in the release; loading them from %s", path, vlm_file)
        load_vlm(model.config.vlm, model.backbone.vlm, model.text_encoder.tower, vlm_file)
        vision = model.backbone.vlm.state_dict()
        filled |= {f"backbone.vlm.{k}" for k in vision}
        if not parts["vlm_text"]:
            filled |= {f"text_encoder.tower.{k}" for k in model.text_encoder.tower.state_dict()}
    return filled


def _calibration(config: ModelConfig, vlm_file: str | Path | None) -> StateDict:
    if config.vlm != "siglip":
        return {}
    if vlm_file is None:
        msg = ("SigLIP releases do not hold logit_scale / logit_bias (the reference reads them from "
               "siglip_vitl16_384.pth when it builds the model): pass that file (or HF model.safetensors) as --vlm")
        raise ConfigError(msg)
    state = read_state_dict(vlm_file)
    missing = [k for k in ("logit_scale", "logit_bias") if k not in state]
    if missing:
        msg = f"{vlm_file}: no {missing} entries; expected the pretrained SigLIP file (HF SiglipModel state dict)"
        raise CheckpointError(msg)
    return {k: state[k].reshape(()).float() for k in ("logit_scale", "logit_bias")}


# ---------------------------------------------------------------------------------------------------------------
# Per-part mappings


# Reference modules MFuser trains: a key under one of these that the mapping does not know is an error, never an
# encoder weight.
_TRAINED_PREFIXES = ("backbone.adapter", "backbone.fpn", "context_decoder.", "decode_head.")


def _map_trained(key: str, value: torch.Tensor, kind: VLMKind) -> tuple[str, torch.Tensor] | None:
    """This project's key and value for a parameter MFuser trains; None for encoder weights and unknown keys."""
    if key.startswith("backbone."):
        mapped = _map_backbone_trainable(key.removeprefix("backbone."), value, kind)
        return None if mapped is None else (f"backbone.{mapped[0]}", mapped[1])
    if key.startswith("context_decoder."):
        mapped = _map_context_decoder(key.removeprefix("context_decoder."), value)
        return None if mapped is None else (f"context_decoder.{mapped[0]}", mapped[1])
    if key.startswith("decode_head."):
        name = _map_head(key.removeprefix("decode_head."))
        return None if name is None else (f"head.{name}", value)
    return {"contexts": ("text_encoder.contexts", value), "gamma": ("gamma", value)}.get(key)


def _mvfuser(rest: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    name = _MVFUSER_NAMES.get(rest)
    if name is None:
        return None
    if rest == "scale":
        value = value.reshape(1)
    return name, value


def _map_backbone_trainable(rest: str, value: torch.Tensor, kind: VLMKind) -> tuple[str, torch.Tensor] | None:
    """MVFusers, CLIP projections and the pyramid; None for encoder keys (handled by the backbone converters)."""
    if m := re.fullmatch(r"adapter\.(\d+)\.(.+)", rest):
        mapped = _mvfuser(m.group(2), value)
        return None if mapped is None else (f"fusers.{m.group(1)}.{mapped[0]}", mapped[1])
    if kind == "clip" and re.fullmatch(r"adapter_proj[12]\.\d+\.(weight|bias)|adapter_proj3\.(weight|bias)", rest):
        return rest, value
    if m := re.fullmatch(r"fpn1\.([013])\.(.+)", rest):
        return f"pyramid.fpn1.{m.group(1)}.{m.group(2)}", value
    if m := re.fullmatch(r"fpn2\.0\.(weight|bias)", rest):
        return f"pyramid.fpn2.{m.group(1)}", value
    return None


def _map_context_decoder(rest: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    if re.fullmatch(r"(memory_proj\.[012]|text_proj\.[01]|out_proj\.[01])\.(weight|bias)", rest):
        return rest, value
    m = re.fullmatch(r"decoder\.(\d+)\.(.+)", rest)
    if m is None:
        return None
    layer, inner = m.groups()
    if inner.startswith("cross_attn."):  # MTEnhancer's MVFuser is called cross_attn in the reference
        mapped = _mvfuser(inner.removeprefix("cross_attn."), value)
        return None if mapped is None else (f"layers.{layer}.fuser.{mapped[0]}", mapped[1])
    module, _, param = inner.rpartition(".")
    if module in _MTENHANCER_NAMES and param in ("weight", "bias"):
        return f"layers.{layer}.{_MTENHANCER_NAMES[module]}.{param}", value
    return None


def _map_head(rest: str) -> str | None:
    module, _, param = rest.rpartition(".")
    if module in _HEAD_SAME:
        return rest
    if rest.startswith("pixel_decoder."):
        name = _map_pixel_decoder(rest.removeprefix("pixel_decoder."))
        return None if name is None else f"pixel_decoder.{name}"
    if rest.startswith("transformer_decoder.post_norm."):
        return f"decoder_norm.{param}"
    if m := re.fullmatch(r"transformer_decoder\.layers\.(\d+)\.(.+)", rest):
        name = _layer_child(m.group(2), _DECODER_LAYER_NAMES)
        return None if name is None else f"layers.{m.group(1)}.{name}"
    return None


def _map_pixel_decoder(inner: str) -> str | None:
    if inner.startswith(_PIXEL_SAME_PREFIXES):
        return inner
    if inner.startswith("encoder.post_norm."):
        return "post_norm." + inner.rpartition(".")[2]
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", inner):
        name = _layer_child(m.group(2), _PIXEL_LAYER_NAMES)
        return None if name is None else f"layers.{m.group(1)}.{name}"
    return None


def _layer_child(inner: str, names: Mapping[str, str]) -> str | None:
    if inner in names:  # in_proj_weight / in_proj_bias are parameters, not modules
        return names[inner]
    module, _, param = inner.rpartition(".")
    if module in names and param in ("weight", "bias"):
        return f"{names[module]}.{param}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Encoders: rename into the public checkpoint layout, then use the backbone converters


def _sub_shapes(shapes: Mapping[str, torch.Size], prefix: str) -> dict[str, torch.Size]:
    return {k.removeprefix(prefix): v for k, v in shapes.items() if k.startswith(prefix)}


def _convert_encoders(groups: Mapping[str, StateDict], kind: VLMKind, shapes: Mapping[str, torch.Size],
                      source: str | Path) -> StateDict:
    vfm_shapes = _sub_shapes(shapes, "backbone.vfm.")
    vlm_shapes = _sub_shapes(shapes, "backbone.vlm.")
    text_shapes = _sub_shapes(shapes, "text_encoder.tower.")
    out: StateDict = {}
    if groups["text"] and not groups["vision"]:
        msg = f"{source}: holds the text tower but not the vision tower of the VLM; a partial VLM is not supported"
        raise CheckpointError(msg)
    try:
        # The reference's DINOv2 is Meta's module with Meta's names (minus the mask token, dropped above).
        if groups["dinov2"]:
            for key, value in convert_dinov2(groups["dinov2"], vfm_shapes).items():
                out[f"backbone.vfm.{key}"] = value
        if not groups["vision"]:  # a release saved without its frozen VLM: the caller provides it
            return out
        public = _PUBLIC_LAYOUT[kind](groups["vision"], groups["text"])
        weights = convert_vlm(public, vlm_shapes, text_shapes, family=kind)
    except CheckpointError as err:
        msg = f"{source}: encoder weights: {err}"
        raise CheckpointError(msg) from None
    out.update({f"backbone.vlm.{k}": v for k, v in weights.vision.items()})
    out.update({f"text_encoder.tower.{k}": v for k, v in weights.text.items()})
    return out


def _clip_public(vision: StateDict, text: StateDict) -> StateDict:
    """OpenAI CLIP file layout: ``visual.*`` for CLIPVisionTransformer's tower, text at the top level."""
    return {**{f"visual.{k}": v for k, v in vision.items()}, **text}


def _eva_public(vision: StateDict, text: StateDict) -> StateDict:
    """BAAI EVA-CLIP file layout: ``visual.*`` and ``text.*`` (the segmentor holds model.visual / model.text)."""
    return {**{f"visual.{k}": v for k, v in vision.items()}, **{f"text.{k}": v for k, v in text.items()}}


def _siglip_public(vision: StateDict, text: StateDict) -> StateDict:
    """Hugging Face SiglipModel layout: ``vision_model.*`` / ``text_model.*`` (the reference keeps HF names)."""
    return {**{f"vision_model.{k}": v for k, v in vision.items()},
            **{f"text_model.{k}": v for k, v in text.items()}}


_PUBLIC_LAYOUT: dict[str, Callable[[StateDict, StateDict], StateDict]] = {
    "clip": _clip_public,
    "eva02": _eva_public,
    "siglip": _siglip_public,
}


# ---------------------------------------------------------------------------------------------------------------
# Checks


def _check(out: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size], origin: Mapping[str, str],
           source: str | Path, provided: frozenset[str]) -> None:
    expected = {k for k in shapes if k not in NOT_IN_RELEASE}
    missing = sorted(expected - set(out) - provided)
    unexpected = sorted(set(out) - expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} model keys get no value: {_listing(missing)}")
    if unexpected:
        described = [f"{k} (from {origin.get(k, '?')})" for k in unexpected]
        problems.append(f"{len(unexpected)} converted keys the model does not have: {_listing(described)}")
    if problems:
        msg = f"{source}: the release does not fit the model: " + "; ".join(problems)
        raise CheckpointError(msg)
    for key in sorted(out):
        if tuple(out[key].shape) != tuple(shapes[key]):
            msg = (f"{source}: key {origin.get(key, key)!r} -> {key!r}: expected shape {tuple(shapes[key])}, "
                   f"found {tuple(out[key].shape)}")
            raise CheckpointError(msg)


def _listing(items: list[str], limit: int = 8) -> str:
    more = len(items) - limit
    return "[" + ", ".join(items[:limit]) + (f", ... and {more} more" if more > 0 else "") + "]"
