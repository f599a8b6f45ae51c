"""Whole-model files: one safetensors file that holds an MFuser and everything needed to rebuild it.

The file carries every tensor (frozen encoders included) and, in the safetensors metadata, the model config
(preset numbers, class names, palette) as JSON and the SHA-256 of the tensors (``tensors_sha256``,
:func:`mfuser_model.fileio.tensor_digest`). The node, replay and evaluation load it with no other file and
no tokenizer: the class-name token ids are a tensor in the file.

Loading checks the digest by default: safetensors has no checksum of its own, so a flipped bit in the tensor data
would otherwise change the weights silently. It costs one pass over the tensors (about 3 s for a full-size model
on one core, ``benchmarks/file_digest.py``), which a node pays once at start-up; ``verify=False`` skips it.
Files without a digest (written before it existed) load unverified.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mfuser_model.config import ModelConfig, load_model_config
from mfuser_model.config_io import dataclass_from_dict, dataclass_to_dict
from mfuser_model.errors import CheckpointError, ConfigError
from mfuser_model.fileio import DIGEST_ALGORITHM, atomic_path, tensor_digest
from mfuser_model.network.mfuser import MFuser, build_mfuser

__all__ = ["FORMAT", "build_model", "load_model", "read_model_config", "read_model_metadata", "save_model"]

FORMAT = "mfuser-model/1"
DIGEST_KEY = f"tensors_{DIGEST_ALGORITHM}"


def save_model(model: MFuser, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(dataclass_to_dict(model.config))}
    metadata.update(extra_metadata or {})
    metadata[DIGEST_KEY] = tensor_digest(tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def read_model_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a whole-model file, without loading its tensors."""
    from safetensors import safe_open  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        msg = f"{path}: model file not found"
        raise CheckpointError(msg)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        msg = f"{path}: not a readable safetensors file ({err})"
        raise CheckpointError(msg) from None
    if metadata.get("format") != FORMAT:
        msg = f"{path}: not an MFuser model file (metadata format {metadata.get('format')!r}, expected {FORMAT!r})"
        raise CheckpointError(msg)
    return metadata


def read_model_config(path: str | Path) -> ModelConfig:
    """The model config stored in a whole-model file (class names, palette, sizes), without loading its tensors."""
    path = Path(path)
    metadata = read_model_metadata(path)
    try:
        return dataclass_from_dict(ModelConfig, json.loads(metadata["config"]), where=f"{path} [config]")
    except (KeyError, json.JSONDecodeError) as err:
        msg = f"{path}: model config in the metadata is missing or corrupt ({err})"
        raise CheckpointError(msg) from None
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def load_model(path: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> MFuser:
    """Rebuild an MFuser from a file written by :func:`save_model` (or ``mfuser-convert``).

    Args:
        verify: check the tensors against the file's digest (a CheckpointError names the file when they differ).
    """
    path = Path(path)
    config = read_model_config(path)
    metadata = read_model_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        msg = f"{path}: cannot read tensors ({err})"
        raise CheckpointError(msg) from None
    if verify and DIGEST_KEY in metadata and tensor_digest(tensors) != metadata[DIGEST_KEY]:
        msg = (f"{path}: corrupt model file: its tensors do not match the {DIGEST_ALGORITHM} it was written with "
               "(damaged on disk or in transfer; copy it again)")
        raise CheckpointError(msg)
    if "text_encoder.token_ids" not in tensors:
        msg = f"{path}: missing key 'text_encoder.token_ids'"
        raise CheckpointError(msg)
    # Built on the CPU, not on the meta device: timm's RoPE tables and open_clip's causal mask are
    # non-persistent buffers that must be computed, not loaded.
    model = build_mfuser(config, token_ids=tensors["text_encoder.token_ids"])
    load_state_dict_strict(model, tensors, path)
    return model.to(device)


def load_state_dict_strict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str | Path, *,
                           may_be_missing: frozenset[str] | set[str] = frozenset()) -> None:
    """Load a state dict in which every key fits: a missing, unexpected or mis-shaped key is a CheckpointError.

    Args:
        model: the module to fill.
        tensors: the state dict.
        source: named in errors (the file it came from).
        may_be_missing: keys the caller fills otherwise (frozen encoders restored from their own files); they keep
            their current values when absent.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors) - set(may_be_missing))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        msg = (f"{source}: state dict does not match the model: {len(missing)} missing "
               f"(first: {missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]})")
        raise CheckpointError(msg)
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            msg = (f"{source}: key {key!r}: expected shape {tuple(expected[key].shape)}, "
                   f"found {tuple(value.shape)}")
            raise CheckpointError(msg)
    model.load_state_dict(tensors, strict=not may_be_missing)


def build_model(preset: str | Path | None = None, checkpoint: str | Path | None = None,
                device: str | torch.device = "cpu", overrides: dict[str, Any] | None = None) -> MFuser:
    """The one entry point for the node, replay and tools.

    - ``checkpoint`` is a whole-model file: load it (``preset``, if given, must match its name).
    - only ``preset``: a randomly initialised model of that preset (for tests, or before training).
    """
    if checkpoint is not None:
        model = load_model(checkpoint, device)
        if preset is not None and Path(str(preset)).suffix == "" and model.config.name != str(preset):
            msg = f"{checkpoint}: holds preset {model.config.name!r}, but preset {str(preset)!r} was requested"
            raise ConfigError(msg)
        return model
    if preset is None:
        msg = "give a preset name or a model checkpoint"
        raise ConfigError(msg)
    return build_mfuser(load_model_config(preset, overrides), device=device)
