"""Load and release the segmentation model for a NodeConfig (lifecycle configure/activate, CLI, replay)."""

from __future__ import annotations

import ctypes
import gc
from dataclasses import dataclass
from typing import Any

import torch

from mfuser_model.checkpoint import build_model
from mfuser_model.errors import ConfigError
from mfuser_ros.node.config import NodeConfig
from mfuser_ros.node.pipeline import SegmentationPipeline

__all__ = ["LoadedModel", "load_model", "release_model"]


@dataclass
class LoadedModel:
    """A ready pipeline plus what the node publishes about the model."""

    pipeline: SegmentationPipeline
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    device: str
    random_weights: bool = False  # no checkpoint: only for tests and demos, the node warns


def _check_device(device: str) -> None:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            msg = f"parameter 'device': {device!r} requested but CUDA is not available on this machine"
            raise ConfigError(msg)
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            msg = f"parameter 'device': {device!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            raise ConfigError(msg)


def _build_segmenter(model: Any, config: NodeConfig) -> Any:
    # The decoder backends (onnxruntime, TensorRT engine cache) live on the model side; the node passes the choice
    # and its options through to that factory (imported here: it pulls in the ONNX exporter).
    from mfuser_model.deploy.decoder_backends import build_segmenter  # noqa: PLC0415

    return build_segmenter(
        model, decoder_backend=config.decoder_backend, onnx_path=config.decoder_onnx or None,
        cache_dir=config.decoder_cache_dir or None, max_batch=config.max_batch, mode=config.inference_mode,
        crop_size=config.crop_size, stride=config.stride, device=config.device, precision=config.precision)


def load_model(config: NodeConfig) -> LoadedModel:
    """Build the model of ``config`` (preset and/or checkpoint) on its device and wrap it in a pipeline.

    Raises:
        ConfigError: unknown preset, device not available, unsupported precision/backend (names the parameter).
        CheckpointError: the checkpoint file cannot be read or does not fit the preset.
    """
    _check_device(config.device)
    model = build_model(config.preset or None, checkpoint=config.checkpoint or None, device=config.device)
    segmenter = _build_segmenter(model, config)
    model_config = model.config
    pipeline = SegmentationPipeline.from_config(config, segmenter, palette=tuple(model_config.palette))
    return LoadedModel(pipeline, tuple(model_config.class_names), tuple(model_config.palette), config.device,
                       random_weights=not config.checkpoint)


def release_model(loaded: LoadedModel | None) -> None:
    """Drop the model and give its memory back to the system (deactivate / cleanup): GPU memory through torch's
    cache, host memory through glibc's ``malloc_trim`` (freed heap pages otherwise stay in the process)."""
    if loaded is None:
        return
    device = loaded.device
    loaded.pipeline.segmenter = None
    del loaded
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    _trim_heap()


def _trim_heap() -> None:
    # glibc keeps freed blocks (tensors below its mmap threshold, which grows after large frees) in the heap; a
    # node that released its model should not keep hundreds of MB resident. No-op where libc has no malloc_trim.
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
