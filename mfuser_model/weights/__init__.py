"""Weight files: safe reading, converters from the public backbone checkpoints, tokenizers."""

from __future__ import annotations

from mfuser_model.weights.backbones import (
    VlmLoadResult,
    VlmWeights,
    convert_dinov2,
    convert_vlm,
    detect_dinov2_format,
    detect_vlm_format,
    expected_shapes,
    load_dinov2,
    load_vlm,
    resize_patch_kernel,
    resize_pos_embed,
)
from mfuser_model.weights.io import LoadReport, load_into, read_state_dict, read_torchscript_tensors
from mfuser_model.weights.tokenizer import TextTokenizer, build_tokenizer

__all__ = [
    "LoadReport",
    "TextTokenizer",
    "VlmLoadResult",
    "VlmWeights",
    "build_tokenizer",
    "convert_dinov2",
    "convert_vlm",
    "detect_dinov2_format",
    "detect_vlm_format",
    "expected_shapes",
    "load_dinov2",
    "load_into",
    "load_vlm",
    "read_state_dict",
    "read_torchscript_tensors",
    "resize_patch_kernel",
    "resize_pos_embed",
]
