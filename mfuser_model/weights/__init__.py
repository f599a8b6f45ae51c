"""Weight files: safe reading, converters from the public backbone checkpoints, tokenizers.

The names below load on first use (PEP 562): importing a submodule such as ``mfuser_model.weights.convert_cli``
(``mfuser-convert --help``) must not import torch through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "mfuser_model.weights.backbones": (
        "VlmLoadResult", "VlmWeights", "convert_dinov2", "convert_vlm", "detect_dinov2_format", "detect_vlm_format",
        "expected_shapes", "load_dinov2", "load_vlm", "resize_patch_kernel", "resize_pos_embed",
    ),
    "mfuser_model.weights.io": ("LoadReport", "load_into", "read_state_dict", "read_torchscript_tensors"),
    "mfuser_model.weights.tokenizer": ("TextTokenizer", "build_tokenizer"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)  # noqa: PLE0605 - built from _EXPORTS, the one list of names


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(module), name)
