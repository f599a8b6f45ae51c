"""Load and release the segmentation model for a NodeConfig (lifecycle configure/activate, CLI, replay)."""

from __future__ import annotations

import ctypes
import gc
from dataclasses import dataclass
from typing import Any

import torch

from mfuser_model.checkpoint import build_model, read_model_config
from mfuser_model.classes import palette_from_hex
from mfuser_model.config import load_model_config
from mfuser_model.errors import ConfigError
from mfuser_model.resources import resolve_path
from mfuser_model.threads import applied_threads
from mfuser_ros.node.config import NodeConfig, output_topic
from mfuser_ros.node.pipeline import SegmentationPipeline

__all__ = ["Legend", "LoadedModel", "load_model", "model_legend", "release_model", "startup_summary"]


@dataclass
class LoadedModel:
    """A ready pipeline plus what the node publishes about the model."""

    pipeline: SegmentationPipeline
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    device: str
    random_weights: bool = False  # no checkpoint: only for tests and demos, the node warns


@dataclass(frozen=True)
class Legend:
    """What a viewer needs to read the label image: a name and an RGB colour per class id."""

    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]


def _legend(config: NodeConfig, class_names: tuple[str, ...],
            model_palette: tuple[tuple[int, int, int], ...]) -> Legend:
    """The model's legend with the ``color_palette`` parameter, when set, in place of its palette."""
    if not config.color_palette:
        return Legend(tuple(class_names), tuple(model_palette))
    palette = palette_from_hex(config.color_palette)  # NodeConfig checked the '#RRGGBB' form
    if len(palette) < len(class_names):
        msg = (f"parameter 'color_palette': {len(palette)} colours for the model's {len(class_names)} classes "
               f"({', '.join(class_names)}); give one per class id or leave it empty for the model's palette")
        raise ConfigError(msg)
    return Legend(tuple(class_names), palette[: len(class_names)])


def model_legend(config: NodeConfig) -> Legend:
    """The legend the node will use, read from the checkpoint's metadata or the preset (no tensors loaded).

    Raises:
        ConfigError: unknown preset, or ``color_palette`` shorter than the class list.
        CheckpointError: the checkpoint cannot be read.
    """
    model_config = (read_model_config(config.checkpoint) if config.checkpoint else load_model_config(config.preset))
    return _legend(config, tuple(model_config.class_names), tuple(model_config.palette))


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
        crop_size=config.crop_size, stride=config.stride, device=config.device, precision=config.precision,
        input_box=config.network_input_box, enlarge=config.network_image_upscale)


def load_model(config: NodeConfig) -> LoadedModel:
    """Build the model of ``config`` (preset and/or checkpoint) on its device and wrap it in a pipeline.

    The palette is ``color_palette`` when set, else the model's.

    Raises:
        ConfigError: unknown preset, device not available, unsupported precision/backend, ``color_palette`` shorter
            than the class list (names the parameter).
        CheckpointError: the checkpoint file cannot be read or does not fit the preset.
    """
    _check_device(config.device)
    model = build_model(config.preset or None, checkpoint=config.checkpoint or None, device=config.device)
    segmenter = _build_segmenter(model, config)
    legend = _legend(config, tuple(model.config.class_names), tuple(model.config.palette))
    pipeline = SegmentationPipeline.from_config(config, segmenter, palette=legend.palette)
    return LoadedModel(pipeline, legend.class_names, legend.palette, config.device,
                       random_weights=not config.checkpoint)


def startup_summary(config: NodeConfig) -> list[str]:
    """What the node runs, for its start-up log (both transports): topics, model file, preset, device, precision,
    decoder backend, input size and CPU threads, so a log shows at once a node on random weights or the wrong file."""
    model = (f"{resolve_path(config.checkpoint)}" if config.checkpoint
             else "none: RANDOM WEIGHTS (allow_random_weights; tests and demos only)")
    outputs = ", ".join(output_topic(ns, "{labels,color,...}") for ns in config.camera_namespaces())
    box = f"{config.network_image_width}x{config.network_image_height}"
    size = f"images fit into {box}{' (smaller ones enlarged)' if config.network_image_upscale else ''}, "
    size += (f"slide windows {config.crop_size} stride {config.stride}" if config.inference_mode == "slide"
             else "whole image")
    threads = applied_threads()
    return [f"topics: in {', '.join(config.image_topics)} (camera info {', '.join(config.camera_info_topic_names())}); "
            f"out {outputs}",
            f"model: {model}; preset {config.preset or '(from the checkpoint)'}; device {config.device}; precision "
            f"{config.precision}; decoder backend {config.decoder_backend}",
            f"input: {size}; outputs "
            f"{'x'.join(map(str, config.output_size[::-1])) if config.output_size else 'at the input size'}; "
            f"{threads.describe() if threads else 'threads: torch default'}"]


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
