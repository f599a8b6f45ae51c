"""TensorRT engines for the exported decode head: build, cache next to the ONNX file, load and run.

Modelled on Autoware's `autoware_tensorrt_common`: the engine lives next to the model (`decoder.onnx` ->
`decoder.fp16.engine`), a JSON sidecar (`decoder.fp16.engine.json`) records what it was built from, and the engine is
rebuilt automatically when any part of that key changes: the ONNX file's sha256, the TensorRT version, the GPU, the
precision, the input shapes (optimisation profile) or, for int8, the calibration data. `build_only` (the CLI's
`--build-only`) builds and returns without running, for CI or a vehicle's first boot.

Uses the TensorRT 10 Python API (`Builder`, `OnnxParser`, `BuilderConfig.set_memory_pool_limit`,
`build_serialized_network`, `Runtime.deserialize_cuda_engine`, `execute_async_v3` + `set_tensor_address`) with torch
CUDA tensors as the buffers. `tensorrt` is imported only inside the functions that need it; everything up to the
build (keys, sidecars, rebuild decisions, calibration data) works without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from mfuser_model.errors import ConfigError, MFuserError
from mfuser_model.fileio import atomic_path

__all__ = [
    "ENGINE_FORMAT",
    "PRECISIONS",
    "CalibrationData",
    "EngineStatus",
    "Profile",
    "RebuildDecision",
    "TensorRTRunner",
    "build_serialized_engine",
    "default_engine_path",
    "engine_cache_key",
    "ensure_engine",
    "file_sha256",
    "gpu_name",
    "rebuild_decision",
    "require_tensorrt",
    "shape_profiles",
    "sidecar_path",
    "write_engine",
]

_logger = logging.getLogger(__name__)

ENGINE_FORMAT = "mfuser-trt-engine/1"
TrtPrecision = Literal["fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
TENSORRT_INSTALL_HINT = (
    "the TensorRT Python package 'tensorrt' (10.x) is not installed. It comes from NVIDIA's package index, not "
    "PyPI (the PyPI 'tensorrt' / 'tensorrt-cu12' packages are stubs that download from it): "
    "pip install 'tensorrt-cu12==10.*' --extra-index-url https://pypi.nvidia.com (match your CUDA major), or use the "
    "Python bindings of the TensorRT tarball / JetPack. Or choose decoder_backend 'onnxruntime' or 'torch'"
)


class Profile(NamedTuple):
    """One input's optimisation-profile shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


class RebuildDecision(NamedTuple):
    """Whether a cached engine must be (re)built, and why (for the log)."""

    rebuild: bool
    reason: str


class EngineStatus(NamedTuple):
    """Outcome of `ensure_engine`."""

    engine_path: Path
    key: dict[str, Any]
    rebuilt: bool
    reason: str
    build_seconds: float


def require_tensorrt():  # noqa: ANN201  (returns the tensorrt module, whose type is not importable here)
    """Import TensorRT (10.x or newer), or raise an error that says where it comes from.

    Raises:
        MFuserError: `tensorrt` is missing or older than 10.
    """
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as err:
        raise MFuserError(f"TensorRT backend unavailable: {TENSORRT_INSTALL_HINT}") from err
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        msg = f"TensorRT {trt.__version__} found; this code uses the TensorRT 10 API (execute_async_v3, tensor names)"
        raise MFuserError(msg)
    return trt


def gpu_name(device: torch.device | str = "cuda") -> str:
    """The CUDA device's name and compute capability, e.g. `NVIDIA H100 80GB HBM3 (sm_90)` (part of the cache key).

    Raises:
        MFuserError: no CUDA device.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        msg = f"TensorRT needs a CUDA device, got {str(device)!r} (CUDA available: {torch.cuda.is_available()})"
        raise MFuserError(msg)
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shape_profiles(inputs: Mapping[str, Sequence[int | str]], *, max_batch: int = 1,
                   opt_batch: int | None = None) -> dict[str, Profile]:
    """Optimisation-profile shapes from an ONNX file's input shapes (`export.read_onnx_io`).

    A symbolic (or -1) axis 0 is the batch: 1 .. `max_batch`, optimised for `opt_batch` (default `max_batch`).
    Every other axis must be fixed: the decoder's spatial sizes are fixed at export.

    Raises:
        ConfigError: a symbolic non-batch axis, or a bad batch range.
    """
    if max_batch < 1:
        msg = f"max_batch={max_batch} must be >= 1"
        raise ConfigError(msg)
    opt_batch = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch:
        msg = f"opt_batch={opt_batch} must lie in [1, max_batch={max_batch}]"
        raise ConfigError(msg)
    profiles = {}
    for name, dims in inputs.items():
        fixed = [d for d in dims[1:] if not (isinstance(d, int) and d > 0)]
        if fixed:
            msg = f"ONNX input {name!r} has shape {list(dims)}: only the batch axis may be dynamic for TensorRT"
            raise ConfigError(msg)
        rest = tuple(int(d) for d in dims[1:])
        if isinstance(dims[0], int) and dims[0] > 0:
            shape = (int(dims[0]), *rest)
            profiles[name] = Profile(shape, shape, shape)
        else:
            profiles[name] = Profile((1, *rest), (opt_batch, *rest), (max_batch, *rest))
    return profiles


def engine_cache_key(*, onnx_sha256: str, tensorrt_version: str, gpu: str, precision: str,
                     profiles: Mapping[str, Profile], calibration_sha256: str | None = None) -> dict[str, Any]:
    """The fields an engine depends on; any change means a rebuild. JSON-ready (shapes as lists).

    Raises:
        ConfigError: unknown precision.
    """
    if precision not in PRECISIONS:
        msg = f"TensorRT precision must be one of {list(PRECISIONS)}, got {precision!r}"
        raise ConfigError(msg)
    return {
        "format": ENGINE_FORMAT,
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": str(tensorrt_version),
        "gpu": gpu,
        "precision": precision,
        "input_shapes": {name: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)}
                         for name, p in sorted(profiles.items())},
        "calibration_sha256": calibration_sha256 if precision == "int8" else None,
    }


def default_engine_path(onnx_path: str | Path, precision: str) -> Path:
    """`decoder.onnx` -> `decoder.<precision>.engine` in the same folder (Autoware keeps engines beside the model)."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.{precision}.engine")


def sidecar_path(engine_path: str | Path) -> Path:
    """The JSON file describing an engine: `<engine>.json`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def rebuild_decision(engine_path: str | Path, key: Mapping[str, Any], *, force: bool = False) -> RebuildDecision:
    """Compare a cached engine's sidecar with the wanted key.

    Args:
        engine_path: the engine file.
        key: from `engine_cache_key`.
        force: always rebuild.

    Returns:
        `(rebuild, reason)`; the reason lists every field that changed, old -> new.
    """
    engine_path = Path(engine_path)
    if force:
        return RebuildDecision(True, "rebuild forced")
    if not engine_path.is_file():
        return RebuildDecision(True, f"{engine_path}: no engine file")
    side = sidecar_path(engine_path)
    if not side.is_file():
        return RebuildDecision(True, f"{side}: no sidecar, the engine's origin is unknown")
    try:
        cached = json.loads(side.read_text(encoding="utf-8"))["key"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return RebuildDecision(True, f"{side}: unreadable sidecar ({err})")
    changed = [f"{field}: {cached.get(field)!r} -> {value!r}" for field, value in key.items()
               if cached.get(field) != value]
    if changed:
        return RebuildDecision(True, f"{side}: " + "; ".join(changed))
    return RebuildDecision(False, f"{engine_path}: cached engine matches")


def write_engine(engine_path: str | Path, data: bytes, key: Mapping[str, Any], *,
                 extra: Mapping[str, Any] | None = None) -> None:
    """Write the engine, then its sidecar, each atomically (temp file + `os.replace`).

    The sidecar goes last, so a crash between the two leaves an engine without a matching sidecar: rebuilt next time.
    """
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    side = sidecar_path(engine_path)
    if side.exists():
        side.unlink()
    _atomic_write(engine_path, data)
    record = {"key": dict(key), "engine": engine_path.name, "bytes": len(data),
              "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
    _atomic_write(side, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


@dataclass(frozen=True)
class CalibrationData:
    """Int8 calibration batches for the decoder: arrays keyed by input name, each `(N, ...)`.

    Made from `.npz` files (`from_npz`: one file or a folder of them, each holding every input name with a leading
    batch axis; the CLI writes such files from a folder of images by running the model). The sha256 of the data is
    part of the engine key, so new calibration data rebuilds the engine.
    """

    arrays: dict[str, np.ndarray]

    @classmethod
    def from_npz(cls, source: str | Path, input_names: Sequence[str], limit: int | None = None) -> CalibrationData:
        """Load a `.npz` file or every `.npz` in a folder (sorted), concatenated along axis 0.

        Raises:
            ConfigError: no files, a missing input name, or mismatched shapes (names the file and key).
        """
        source = Path(source)
        files = sorted(source.glob("*.npz")) if source.is_dir() else [source]
        if not files or not files[0].is_file():
            msg = f"{source}: no .npz calibration files found"
            raise ConfigError(msg)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in input_names}
        for file in files:
            with np.load(file) as data:
                for name in input_names:
                    if name not in data.files:
                        msg = f"{file}: calibration file lacks input {name!r} (has {sorted(data.files)})"
                        raise ConfigError(msg)
                    parts[name].append(np.asarray(data[name], dtype=np.float32))
        arrays = {}
        for name, chunks in parts.items():
            if len({c.shape[1:] for c in chunks}) != 1:
                msg = f"{source}: input {name!r} has different shapes across files: {[c.shape for c in chunks]}"
                raise ConfigError(msg)
            arrays[name] = np.concatenate(chunks, axis=0)[:limit]
        counts = {a.shape[0] for a in arrays.values()}
        if len(counts) != 1:
            msg = f"{source}: inputs hold different sample counts {({k: a.shape[0] for k, a in arrays.items()})}"
            raise ConfigError(msg)
        return cls(arrays)

    @property
    def num_samples(self) -> int:
        """N."""
        return next(iter(self.arrays.values())).shape[0]

    def sha256(self) -> str:
        """Hex sha256 over names, shapes and bytes."""
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[name])
            h.update(f"{name}:{a.shape}:{a.dtype}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def batches(self, batch: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive full batches (a remainder smaller than `batch` is dropped)."""
        for start in range(0, self.num_samples - batch + 1, batch):
            yield {name: a[start: start + batch] for name, a in self.arrays.items()}

    def check_shapes(self, profiles: Mapping[str, Profile], batch: int) -> None:
        """Raise ConfigError unless every input matches the engine's non-batch shape and there is one full batch."""
        for name, profile in profiles.items():
            if name not in self.arrays:
                msg = f"calibration data lacks input {name!r}"
                raise ConfigError(msg)
            if tuple(self.arrays[name].shape[1:]) != tuple(profile.opt[1:]):
                msg = (f"calibration input {name!r} has sample shape {tuple(self.arrays[name].shape[1:])}, the engine "
                       f"expects {tuple(profile.opt[1:])}")
                raise ConfigError(msg)
        if self.num_samples < batch:
            msg = f"calibration data holds {self.num_samples} samples, fewer than one batch of {batch}"
            raise ConfigError(msg)


def _make_entropy_calibrator(trt: Any, data: CalibrationData, batch: int, cache_file: Path, device: torch.device):
    """An `IInt8EntropyCalibrator2` feeding `data` from torch CUDA buffers (class made here: trt is optional)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = data.batches(batch)
            self._buffers: dict[str, torch.Tensor] = {}

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                arrays = next(self._batches)
            except StopIteration:
                return None
            # keep the tensors referenced until the next call: TensorRT reads them asynchronously
            self._buffers = {n: torch.from_numpy(arrays[n]).to(device).contiguous() for n in names}
            return [self._buffers[n].data_ptr() for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            _atomic_write(cache_file, bytes(cache))

    return EntropyCalibrator()


def build_serialized_engine(onnx_path: str | Path, *, precision: TrtPrecision, profiles: Mapping[str, Profile],
                            calibration: CalibrationData | None = None, calibration_cache: Path | None = None,
                            workspace_bytes: int = 4 << 30, device: torch.device | str = "cuda") -> bytes:
    """Parse the ONNX file and build a serialized engine with the TensorRT 10 API.

    Raises:
        MFuserError: TensorRT missing, ONNX parse errors (listed), or the build failed.
        ConfigError: int8 without calibration data.
    """
    if precision == "int8" and calibration is None:
        msg = ("TensorRT int8 needs calibration data (--calib: a folder of images or of .npz decoder inputs); "
               "without it use precision fp16 or fp32")
        raise ConfigError(msg)
    trt = require_tensorrt()
    device = torch.device(device)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    # TensorRT 10 networks are always explicit-batch: NetworkDefinitionCreationFlag.EXPLICIT_BATCH is deprecated and
    # ignored, so no flag is set (STRONGLY_TYPED would forbid the precision flags below)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        msg = f"{onnx_path}: TensorRT could not parse the ONNX file: {errors}"
        raise MFuserError(msg)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 layers fall back to fp16, not fp32
    if precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for name, p in profiles.items():
        profile.set_shape(name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    calibrator = None
    if precision == "int8":
        calib_batch = profiles[next(iter(profiles))].opt[0]
        calibration.check_shapes(profiles, calib_batch)
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        cache = calibration_cache or Path(tempfile.gettempdir()) / f"mfuser-calib-{calibration.sha256()[:16]}.cache"
        calibrator = _make_entropy_calibrator(trt, calibration, calib_batch, cache, device)
        config.int8_calibrator = calibrator
    with torch.cuda.device(device):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        msg = f"{onnx_path}: TensorRT failed to build a {precision} engine (see the TensorRT log above)"
        raise MFuserError(msg)
    return bytes(serialized)


def ensure_engine(onnx_path: str | Path, *, precision: TrtPrecision = "fp16", engine_path: str | Path | None = None,
                  max_batch: int = 1, opt_batch: int | None = None, calibration: CalibrationData | None = None,
                  workspace_bytes: int = 4 << 30, device: torch.device | str = "cuda",
                  force: bool = False) -> EngineStatus:
    """The engine for `onnx_path`: reuse the cached one if its sidecar key matches, else build and cache it.

    Args:
        onnx_path: the exported decoder.
        precision: `fp32`, `fp16`, `bf16` or `int8` (int8 needs `calibration`).
        engine_path: where to cache it (default `default_engine_path`).
        max_batch / opt_batch: batch range of a dynamic-batch ONNX file (ignored for a fixed batch).
        calibration: int8 calibration data.
        workspace_bytes: builder workspace limit.
        device: the CUDA device the engine is built for.
        force: rebuild even if the cache matches.

    Raises:
        MFuserError: TensorRT or CUDA missing, or the build failed.
        ConfigError: bad precision, shapes or calibration.
    """
    from mfuser_model.deploy.onnx_export import read_onnx_io  # noqa: PLC0415  (export imports the model; keep this module light)

    onnx_path = Path(onnx_path)
    if precision == "int8" and calibration is None:
        msg = ("TensorRT int8 needs calibration data (--calib: a folder of images or of .npz decoder inputs); "
               "without it use precision fp16 or fp32")
        raise ConfigError(msg)
    trt = require_tensorrt()
    inputs, _ = read_onnx_io(onnx_path)
    profiles = shape_profiles(inputs, max_batch=max_batch, opt_batch=opt_batch)
    key = engine_cache_key(onnx_sha256=file_sha256(onnx_path), tensorrt_version=trt.__version__,
                           gpu=gpu_name(device), precision=precision, profiles=profiles,
                           calibration_sha256=calibration.sha256() if calibration is not None else None)
    engine_path = Path(engine_path) if engine_path is not None else default_engine_path(onnx_path, precision)
    decision = rebuild_decision(engine_path, key, force=force)
    if not decision.rebuild:
        return EngineStatus(engine_path, key, False, decision.reason, 0.0)
    _logger.info("Building TensorRT %s engine %s (%s)", precision, engine_path, decision.reason)
    start = time.perf_counter()
    data = build_serialized_engine(onnx_path, precision=precision, profiles=profiles, calibration=calibration,
                                   calibration_cache=_calibration_cache_path(engine_path, calibration),
                                   workspace_bytes=workspace_bytes, device=device)
    seconds = time.perf_counter() - start
    write_engine(engine_path, data, key, extra={"onnx": onnx_path.name, "build_seconds": round(seconds, 2)})
    return EngineStatus(engine_path, key, True, decision.reason, seconds)


def _calibration_cache_path(engine_path: Path, calibration: CalibrationData | None) -> Path | None:
    """`<engine>.<data sha>.calib`: TensorRT trusts a calibration cache it finds, so new data needs a new name."""
    if calibration is None:
        return None
    return engine_path.with_name(f"{engine_path.name}.{calibration.sha256()[:16]}.calib")


_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int32": torch.int32,
                 "int64": torch.int64, "int8": torch.int8, "bool": torch.bool, "uint8": torch.uint8}


def _torch_dtypes(trt: Any) -> dict[Any, torch.dtype]:
    """TensorRT DataType -> torch dtype, for the types this TensorRT defines (`trt.float32` is `DataType.FLOAT`)."""
    return {getattr(trt, name): dtype for name, dtype in _TORCH_DTYPES.items() if hasattr(trt, name)}


class TensorRTRunner:
    """A deserialized engine and one execution context; runs on torch CUDA tensors.

    Args:
        engine_path: a serialized engine (from `ensure_engine`).
        device: its CUDA device.

    Raises:
        MFuserError: TensorRT or CUDA missing, or the engine cannot be deserialized (e.g. built by another
            TensorRT version or for another GPU: rebuild it).
    """

    def __init__(self, engine_path: str | Path, device: torch.device | str = "cuda") -> None:
        trt = require_tensorrt()
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            msg = f"TensorRT engines run on CUDA, got device {str(self.device)!r}"
            raise MFuserError(msg)
        self.engine_path = Path(engine_path)
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self.engine is None:
                msg = f"{self.engine_path}: TensorRT could not deserialize the engine; delete it to rebuild"
                raise MFuserError(msg)
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        to_torch = _torch_dtypes(trt)
        self.dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}
        self.profiles = {n: Profile(*(tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)))
                         for n in self.input_names}

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Enqueue the engine on the current torch CUDA stream; outputs are new tensors on that stream.

        Raises:
            ValueError: a missing input or a shape outside the engine's profile (names the input).
            MFuserError: TensorRT refused to run.
        """
        bound = {}
        for name in self.input_names:
            if name not in inputs:
                msg = f"{self.engine_path}: input {name!r} missing (got {sorted(inputs)})"
                raise ValueError(msg)
            t = inputs[name].to(self.device, self.dtypes[name]).contiguous()
            p = self.profiles[name]
            shape = tuple(t.shape)
            if len(shape) != len(p.min) or any(not lo <= s <= hi for s, lo, hi in zip(shape, p.min, p.max,
                                                                                         strict=True)):
                msg = (f"{self.engine_path}: input {name!r} has shape {shape}; the engine accepts {p.min} .. {p.max} "
                       "(spatial sizes are fixed at export: re-export for this image size)")
                raise ValueError(msg)
            if not self.context.set_input_shape(name, shape):
                msg = f"{self.engine_path}: TensorRT rejected shape {shape} for input {name!r}"
                raise MFuserError(msg)
            self.context.set_tensor_address(name, t.data_ptr())
            bound[name] = t  # alive until enqueued; the caching allocator orders reuse on this stream
        outputs = {}
        for name in self.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            msg = f"{self.engine_path}: execute_async_v3 failed"
            raise MFuserError(msg)
        return outputs

    def warmup(self, iterations: int = 3) -> float:
        """Run `iterations` times on zeros of the profile's opt shapes; returns the last run's milliseconds."""
        inputs = {n: torch.zeros(self.profiles[n].opt, dtype=self.dtypes[n], device=self.device)
                  for n in self.input_names}
        ms = 0.0
        for _ in range(max(1, iterations)):
            start = time.perf_counter()
            self.run(inputs)
            torch.cuda.synchronize(self.device)
            ms = (time.perf_counter() - start) * 1e3
        return ms
