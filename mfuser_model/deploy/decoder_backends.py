"""Decode-head backends: PyTorch, onnxruntime or TensorRT behind `MFuserHead.forward`'s signature.

Each backend is an `nn.Module` called as `backend(features, text)` with the head's inputs (four `(B, C, H_i, W_i)`
maps at strides 4..32 and `(B, K, text_dim)` refined text) and returns a `HeadOutput` holding the **final stage
only** (lists of length 1): that is all inference uses (`MFuser.predict` takes `[-1]`). `semantic_scores(features,
text)` returns `(B, K, h, w)` directly. `attach_decoder_backend(model, name)` puts a backend in `model.head`, so
`Segmenter`, the node and replay run the backbone in PyTorch and the decoder in the chosen runtime;
`build_segmenter(model, decoder_backend=...)` does that and returns a `Segmenter`.

Spatial sizes are fixed per exported graph. With an explicit `onnx_path` the backend serves that one size (the crop
size of sliding-window inference, or one configured whole-image size) and rejects others with a clear error (an image
side below the crop gives a smaller window, decoded unpadded as the reference does, so it needs its own export). Without
one, the backend exports the attached head once per new input size into a cache folder (file names carry a hash of
the head's weights), so whole-image inference of several sizes also works, at the cost of one export (and for
TensorRT one engine build) per size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from mfuser_model.deploy.onnx_export import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    DecoderInputs,
    FinalStageDecoder,
    export_decoder,
    head_fingerprint,
)
from mfuser_model.errors import ConfigError, MFuserError
from mfuser_model.inference import Segmenter
from mfuser_model.network.decode_head import HeadOutput
from mfuser_model.threads import applied_threads

__all__ = [
    "BACKENDS",
    "DecoderBackend",
    "OnnxRuntimeDecoder",
    "PerShapeDecoder",
    "TensorRTDecoder",
    "TorchDecoder",
    "attach_decoder_backend",
    "build_segmenter",
    "default_cache_dir",
    "detach_decoder_backend",
    "make_decoder_backend",
]

_logger = logging.getLogger(__name__)

BackendName = Literal["torch", "onnxruntime", "tensorrt"]
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt")


def _check_inputs(features: Sequence[Tensor], text: Tensor) -> list[Tensor]:
    if len(features) != 4:
        msg = f"decoder backend: expected 4 feature maps (strides 4, 8, 16, 32), got {len(features)}"
        raise ValueError(msg)
    return [*features, text]


class DecoderBackend(nn.Module):
    """Base class: subclasses implement `run(tensors) -> (class_logits, mask_logits, semantic_scores)`."""

    name: str = ""

    def run(self, tensors: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Five input tensors in `DECODER_INPUTS` order -> final `class_logits`, `mask_logits`, `semantic_scores`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")

    def forward(self, features: Sequence[Tensor], text: Tensor) -> HeadOutput:
        """Final-stage predictions, as `MFuserHead.forward` returns them but one stage long.

        Args:
            features: four `(B, C, H/s, W/s)` maps for s = 4, 8, 16, 32.
            text: `(B, K, text_dim)` refined text embeddings.

        Returns:
            `HeadOutput([class_logits (B, K, K+1)], [mask_logits (B, K, H/4, W/4)])`, float32 on `text.device`.
        """
        cls, mask, _ = self.run(_check_inputs(features, text))
        return HeadOutput([cls], [mask])

    def semantic_scores(self, features: Sequence[Tensor], text: Tensor) -> Tensor:
        """`(B, K, H/4, W/4)` class scores (softmax(class) x sigmoid(mask), summed over queries)."""
        return self.run(_check_inputs(features, text))[2]


class TorchDecoder(DecoderBackend):
    """The PyTorch head itself, final stage only (the reference point for the other backends).

    Args:
        head: an `MFuserHead` (registered as a submodule, so `.to()` moves it).
    """

    name = "torch"

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.module = FinalStageDecoder(head)

    def run(self, tensors: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Run the head."""
        return self.module(*tensors)


class OnnxRuntimeDecoder(DecoderBackend):
    """An exported decoder run by onnxruntime.

    Args:
        onnx_path: a file from `export_decoder` (inputs `DECODER_INPUTS`, outputs `DECODER_OUTPUTS`).
        providers: onnxruntime execution providers (default: CUDA if `device` is CUDA and onnxruntime-gpu offers it,
            then CPU).
        device: where the caller's tensors live; only used to pick the default providers.
        num_threads: intra-op threads (default: the count `mfuser_model.threads.apply_threads` set, else
            onnxruntime's choice).

    Raises:
        MFuserError: onnxruntime missing, or the file is not a decoder export.
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, *, providers: Sequence[str] | None = None,
                 device: torch.device | str = "cpu", num_threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort  # noqa: PLC0415
        except ImportError as err:
            msg = ("decoder_backend 'onnxruntime' needs the 'onnxruntime' package: pip install 'onnxruntime==1.32.0' "
                   "(or onnxruntime-gpu), or the project's 'export' extra")
            raise MFuserError(msg) from err
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            msg = f"{self.onnx_path}: ONNX decoder file not found"
            raise MFuserError(msg)
        if providers is None:
            available = ort.get_available_providers()
            wanted = ["CUDAExecutionProvider"] if torch.device(device).type == "cuda" else []
            providers = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        policy = applied_threads()  # the process's thread policy (mfuser_model.threads), unless told otherwise
        if num_threads is None and policy is not None:
            num_threads = policy.threads
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        if policy is not None and policy.passive_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), sess_options=options, providers=list(providers))
        except Exception as err:  # onnxruntime raises its own pybind error types
            msg = f"{self.onnx_path}: onnxruntime cannot load the decoder ({err})"
            raise MFuserError(msg) from err
        inputs = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if tuple(inputs) != DECODER_INPUTS or tuple(outputs) != DECODER_OUTPUTS:
            msg = (f"{self.onnx_path}: not a decoder export: inputs {list(inputs)}, outputs {outputs} "
                   f"(expected {list(DECODER_INPUTS)} -> {list(DECODER_OUTPUTS)})")
            raise MFuserError(msg)
        self.input_shapes = inputs

    def run(self, tensors: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Copy to float32 numpy, run the session, return torch tensors on the inputs' device.

        Raises:
            ValueError: an input shape the file was not exported for (names the input and both shapes).
        """
        feed = {}
        for name, t in zip(DECODER_INPUTS, tensors, strict=True):
            expected = self.input_shapes[name]
            if len(expected) != t.dim() or any(isinstance(e, int) and e != s for e, s in zip(expected, t.shape,
                                                                                            strict=True)):
                msg = (f"{self.onnx_path}: input {name!r} has shape {tuple(t.shape)}, the file was exported for "
                       f"{expected} (spatial sizes are fixed at export, and the batch unless it was exported with "
                       "a dynamic batch: re-export for this input)")
                raise ValueError(msg)
            feed[name] = t.detach().to("cpu", torch.float32).contiguous().numpy()
        outs = self.session.run(list(DECODER_OUTPUTS), feed)
        device = tensors[-1].device
        return tuple(torch.from_numpy(np.ascontiguousarray(o)).to(device) for o in outs)  # type: ignore[return-value]


class TensorRTDecoder(DecoderBackend):
    """An exported decoder as a TensorRT engine, built (or reused from the cache next to the ONNX file) at init.

    Args:
        onnx_path: a file from `export_decoder`.
        precision: `fp32`, `fp16`, `bf16` or `int8` (int8 needs `calibration`).
        engine_path: cache location (default `<onnx stem>.<precision>.engine` beside the ONNX file).
        max_batch: batch range 1..max_batch of a dynamic-batch export.
        calibration: `tensorrt_engine.CalibrationData` for int8.
        device: the CUDA device.
        warmup: runs at init so the first frame is not slow (0 to skip).
        force_rebuild: rebuild even when the cached engine matches.

    Raises:
        MFuserError: TensorRT or CUDA missing (names the package and NVIDIA's index), or the build failed.
    """

    name = "tensorrt"

    def __init__(self, onnx_path: str | Path, *, precision: str = "fp16", engine_path: str | Path | None = None,
                 max_batch: int = 1, calibration: Any = None, device: torch.device | str = "cuda",
                 warmup: int = 3, force_rebuild: bool = False) -> None:
        super().__init__()
        from mfuser_model.deploy import tensorrt_engine as te  # noqa: PLC0415

        te.require_tensorrt()
        self.status = te.ensure_engine(onnx_path, precision=precision, engine_path=engine_path, max_batch=max_batch,
                                       calibration=calibration, device=device, force=force_rebuild)
        _logger.info("TensorRT decoder %s: %s", self.status.engine_path,
                     "built" if self.status.rebuilt else "reused from cache")
        self.runner = te.TensorRTRunner(self.status.engine_path, device=device)
        if warmup > 0:
            self.runner.warmup(warmup)

    def run(self, tensors: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Run the engine on the current CUDA stream; outputs are float32 on the inputs' device."""
        outs = self.runner.run(dict(zip(DECODER_INPUTS, tensors, strict=True)))
        device = tensors[-1].device
        return tuple(outs[n].float().to(device) for n in DECODER_OUTPUTS)  # type: ignore[return-value]


BackendFactory = Callable[[Path], DecoderBackend]


class PerShapeDecoder(DecoderBackend):
    """Exports the head once per input size into `cache_dir` and runs each export with a backend from `factory`.

    The head is kept outside the module tree (not a submodule: `state_dict()` and `.to()` of the model leave it
    alone); exports use a float32 CPU copy of it.

    Args:
        head: the `MFuserHead` to export.
        factory: ONNX path -> backend (e.g. `OnnxRuntimeDecoder`).
        cache_dir: where exports go; reused across runs (names carry the head's weight hash and the shapes).
        dynamic_batch: export with a symbolic batch (one file serves every batch size).
        name: the backend name reported.
    """

    def __init__(self, head: nn.Module, factory: BackendFactory, cache_dir: str | Path, *,
                 dynamic_batch: bool = True, name: str = "onnxruntime") -> None:
        super().__init__()
        object.__setattr__(self, "_head", head)
        self.factory = factory
        self.cache_dir = Path(cache_dir)
        self.dynamic_batch = dynamic_batch
        self.name = name
        self.fingerprint = head_fingerprint(head)
        self._backends: dict[tuple, DecoderBackend] = {}
        self._lock = threading.Lock()

    @property
    def torch_head(self) -> nn.Module:
        """The PyTorch head this backend stands in for."""
        return self._head

    def onnx_path_for(self, tensors: Sequence[Tensor]) -> Path:
        """The cache file for inputs of these shapes."""
        shapes = [tuple(t.shape[1:] if self.dynamic_batch else t.shape) for t in tensors]
        batch = "dyn" if self.dynamic_batch else f"b{tensors[0].shape[0]}"
        s4 = shapes[0]
        # readable part for people, digest of every shape for uniqueness
        digest = hashlib.sha256(repr(shapes).encode()).hexdigest()[:8]
        tag = f"c{s4[-3]}-{s4[-2]}x{s4[-1]}-k{shapes[4][-2]}x{shapes[4][-1]}-{batch}-{digest}"
        return self.cache_dir / f"decoder-{self.fingerprint}-{tag}.onnx"

    def backend_for(self, tensors: Sequence[Tensor]) -> DecoderBackend:
        """The backend for these inputs, exporting (and building) it on first use."""
        key = tuple(tuple(t.shape[1:] if self.dynamic_batch else t.shape) for t in tensors)
        with self._lock:
            backend = self._backends.get(key)
            if backend is None:
                path = self.onnx_path_for(tensors)
                if not path.is_file():
                    _logger.info("Exporting the decode head for input shapes %s to %s", key, path)
                    export_decoder(self._head, path, DecoderInputs(list(tensors[:4]), tensors[4]),
                                   dynamic_batch=self.dynamic_batch)
                backend = self.factory(path)
                self._backends[key] = backend
        return backend

    def run(self, tensors: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Dispatch to the backend for these shapes."""
        return self.backend_for(tensors).run(tensors)


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/mfuser/decoders` (default `~/.cache/mfuser/decoders`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mfuser" / "decoders"


def make_decoder_backend(backend: str, *, head: nn.Module | None = None, onnx_path: str | Path | None = None,
                         cache_dir: str | Path | None = None, device: torch.device | str = "cpu",
                         dynamic_batch: bool = True, precision: str = "fp32", max_batch: int = 4,
                         calibration: Any = None, warmup: int = 3, num_threads: int | None = None) -> DecoderBackend:
    """Build a decoder backend by name.

    Args:
        backend: `torch`, `onnxruntime` or `tensorrt`.
        head: the PyTorch head (needed for `torch`, and for the others when `onnx_path` is not given).
        onnx_path: a fixed export to run (one input size); `None` exports per input size into `cache_dir`.
        cache_dir: export cache (default `default_cache_dir()`).
        device: where the caller's tensors live (CUDA for tensorrt).
        dynamic_batch: exports made here get a symbolic batch.
        precision: TensorRT precision (`fp32`, `fp16`, `bf16`, `int8`).
        max_batch: TensorRT profile's largest batch for dynamic-batch exports.
        calibration: TensorRT int8 calibration data.
        warmup: TensorRT warm-up runs per engine.
        num_threads: onnxruntime intra-op threads.

    Raises:
        ConfigError: unknown backend name, or no head and no ONNX file.
    """
    if backend not in BACKENDS:
        msg = f"decoder_backend must be one of {list(BACKENDS)}, got {backend!r}"
        raise ConfigError(msg)
    if backend == "torch":
        if head is None:
            msg = "decoder_backend 'torch' needs the PyTorch head"
            raise ConfigError(msg)
        return TorchDecoder(head)
    factory: BackendFactory
    if backend == "onnxruntime":
        def factory(path: Path) -> DecoderBackend:
            return OnnxRuntimeDecoder(path, device=device, num_threads=num_threads)
    else:
        from mfuser_model.deploy.tensorrt_engine import require_tensorrt  # noqa: PLC0415

        require_tensorrt()  # fail before any export work

        def factory(path: Path) -> DecoderBackend:
            return TensorRTDecoder(path, precision=precision, max_batch=max_batch, calibration=calibration,
                                   device=device, warmup=warmup)
    if onnx_path is not None:
        return factory(Path(onnx_path))
    if head is None:
        msg = f"decoder_backend {backend!r} needs an ONNX file (onnx_path) or the PyTorch head to export"
        raise ConfigError(msg)
    return PerShapeDecoder(head, factory, cache_dir or default_cache_dir(), dynamic_batch=dynamic_batch,
                           name=backend)


def attach_decoder_backend(model: nn.Module, backend: str, **options: Any) -> nn.Module:
    """Replace `model.head` by a decoder backend (inference only: it returns the final stage only).

    `torch` leaves the model unchanged. The replaced head is kept as `model.head.torch_head` (per-shape backends)
    or in `model._torch_head`, and `detach_decoder_backend` puts it back. The model's `state_dict()` lacks the head
    while a backend is attached: save models before attaching.

    Args:
        model: an MFuser (anything with a `.head` called as `head(features, text)`).
        backend: `torch`, `onnxruntime` or `tensorrt`.
        **options: passed to `make_decoder_backend` (`onnx_path`, `cache_dir`, `device`, `precision`, ...).

    Returns:
        The module now in `model.head`.
    """
    if backend not in BACKENDS:
        msg = f"decoder_backend must be one of {list(BACKENDS)}, got {backend!r}"
        raise ConfigError(msg)
    if isinstance(model.head, DecoderBackend):
        detach_decoder_backend(model)
    if backend == "torch":
        return model.head
    head = model.head
    decoder = make_decoder_backend(backend, head=head, **options)
    object.__setattr__(model, "_torch_head", head)
    model.head = decoder
    return decoder


def detach_decoder_backend(model: nn.Module) -> nn.Module:
    """Put the PyTorch head back in `model.head` (no-op if none is attached); returns it."""
    head = model.__dict__.pop("_torch_head", None)
    if head is not None:
        model.head = head
    return model.head


def build_segmenter(model: nn.Module, *, decoder_backend: str = "torch", onnx_path: str | Path | None = None,
                    cache_dir: str | Path | None = None, decoder_precision: str | None = None, max_batch: int = 4,
                    **segmenter_kwargs: Any) -> Segmenter:
    """A `Segmenter` whose decode head runs on `decoder_backend` (the node's and replay's factory).

    Args:
        model: an MFuser.
        decoder_backend: `torch`, `onnxruntime` or `tensorrt`.
        onnx_path: a fixed decoder export; default: export per input size into `cache_dir`.
        cache_dir: export cache (default `default_cache_dir()`; TensorRT engines go next to the exports).
        decoder_precision: TensorRT precision (default `fp16` when the segmenter runs `fp16`, else `fp32`).
        max_batch: TensorRT profile's largest batch.
        **segmenter_kwargs: `mode`, `crop_size`, `stride`, `device`, `precision`, `input_box`, `enlarge` of `Segmenter`.

    Returns:
        A `mfuser_model.inference.Segmenter`.
    """
    device = segmenter_kwargs.get("device", "cpu")
    if decoder_backend == "tensorrt" and torch.device(device).type != "cuda":
        msg = f"decoder_backend 'tensorrt' needs a CUDA device, got device {device!r}"
        raise ConfigError(msg)
    precision = decoder_precision or ("fp16" if segmenter_kwargs.get("precision") == "fp16" else "fp32")
    attach_decoder_backend(model, decoder_backend, onnx_path=onnx_path, cache_dir=cache_dir, device=device,
                           precision=precision, max_batch=max_batch)
    return Segmenter(model, **segmenter_kwargs)
