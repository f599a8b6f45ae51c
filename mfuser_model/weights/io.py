"""Reading weight files without running code from them, and loading state dicts with a strict report.

Formats read by :func:`read_state_dict`:

- ``*.safetensors``: raw tensors plus a JSON header; nothing is executed.
- ``torch.save`` files (``.pt``, ``.pth``, ``.bin``, zip or legacy format): ``torch.load(weights_only=True)``, which
  only rebuilds tensors and plain containers and refuses any other pickled global.
- TorchScript archives (OpenAI's ``ViT-L-14-336px.pt``): ``torch.load`` refuses ``weights_only=True`` for these and
  ``torch.jit.load`` would compile and run the Python code stored in the archive. :func:`read_torchscript_tensors`
  reads the tensors directly with a restricted unpickler (see its docstring for why that is safe).

A file that needs arbitrary unpickling is refused with a :class:`~mfuser_model.errors.CheckpointError` saying so.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import nn

from mfuser_model.errors import CheckpointError

__all__ = ["LoadReport", "load_into", "read_state_dict", "read_torchscript_tensors"]

# Wrapper keys that training frameworks put around the weights (mmcv/mmseg: state_dict, DeiT/MAE: model).
_WRAPPER_KEYS = ("state_dict", "model", "module")
_MAX_LISTED_KEYS = 12

# TorchScript pickles name storages by class (GLOBAL 'torch HalfStorage'); these are the dtypes they stand for.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat ``{name: tensor}`` dict on the CPU, without executing code from it.

    Wrappers are removed: a top-level ``state_dict`` / ``model`` / ``module`` entry holding the weights, and a
    ``module.`` prefix on every key (DataParallel).

    Args:
        path: a ``.safetensors`` file, a ``torch.save`` file (``.pt``/``.pth``/``.bin``) or a TorchScript archive.

    Returns:
        The tensors by name.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, needs arbitrary unpickling, or holds no
            tensor dict. The message names the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Weight file {path} does not exist (or is not a file)."
        raise CheckpointError(msg)
    if path.suffix == ".safetensors":
        obj: Any = _read_safetensors(path)
    elif zipfile.is_zipfile(path) and _is_torchscript_zip(path):
        obj = read_torchscript_tensors(path)
    else:
        obj = _torch_load_weights_only(path)
    return _unwrap(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        msg = f"Cannot read {path} as safetensors (truncated or corrupt file?): {err}"
        raise CheckpointError(msg) from err


def _torch_load_weights_only(path: Path) -> Any:
    with path.open("rb") as f:
        magic = f.read(4)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text or "unsupported" in text.lower():
            # torch names the offending global ("...unsupported GLOBAL posix.system..."); keep only that line, not
            # its advice to retry with weights_only=False.
            lines = [line.strip() for line in text.splitlines() if "global" in line.lower()]
            detail = lines[0] if lines else "unsupported pickled object"
            msg = (
                f"Refusing to load {path}: it needs arbitrary unpickling, which can run code ({detail}). "
                "Only tensors and plain containers are accepted; re-save the weights (state_dict only, or "
                "safetensors) from a trusted environment."
            )
        else:
            msg = f"Cannot unpickle {path} (truncated or corrupt file?): {err}"
        raise CheckpointError(msg) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        if "TorchScript" in str(err):  # torch recognised an archive our own check missed
            return read_torchscript_tensors(path)
        kind = "a truncated or corrupt zip archive" if magic[:2] == b"PK" else "not a readable torch file"
        msg = f"Cannot read {path}: {kind} ({err})"
        raise CheckpointError(msg) from err


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping) and not _all_tensors(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            msg = f"{path} holds no plain tensor dict: non-tensor entries {', '.join(bad[:_MAX_LISTED_KEYS])}."
            raise CheckpointError(msg)
        obj = inner
    if not isinstance(obj, Mapping):
        msg = f"{path} holds a {type(obj).__name__}, not a dict of tensors."
        raise CheckpointError(msg)
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _all_tensors(obj: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in obj.values())


# ---------------------------------------------------------------------------------------------------------------
# TorchScript archives


def _is_torchscript_zip(path: Path) -> bool:
    # torch.save zips hold <name>/data.pkl + data/; TorchScript adds the compiled code and a constants table.
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


class _ScriptObject:
    """Inert stand-in for a ``__torch__.*`` class of a TorchScript archive: it only keeps the pickled attributes."""

    type_name = "?"
    attributes: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


def _script_class(type_name: str) -> type:
    # A subclass per archive class keeps the type name for messages; no archive code is attached to it.
    return type(type_name.rsplit(".", 1)[-1], (_ScriptObject,), {"type_name": type_name})


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _identity_list(data: list) -> list:
    return data


def _restore_type_tag(value: Any, _type_str: str) -> Any:
    # torch.jit._pickle.restore_type_tag is this identity too: the tag only matters to the TorchScript runtime.
    return value


# Side-effect-free callables a TorchScript data.pkl may name besides tensors and storages.
_PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,  # empty backward-hooks dict of every tensor record
    ("torch.jit._pickle", "build_intlist"): _identity_list,
    ("torch.jit._pickle", "build_doublelist"): _identity_list,
    ("torch.jit._pickle", "build_boollist"): _identity_list,
    ("torch.jit._pickle", "build_tensorlist"): _identity_list,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
}


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickler for TorchScript ``data.pkl`` that can only rebuild tensors from the archive's raw storages."""

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self._zf = zf
        self._prefix = prefix
        self._path = path
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return _script_class(f"{module}.{name}")
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor
        allowed = _PLAIN_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        msg = (
            f"Refusing to read TorchScript archive {self._path}: its data.pkl references {module}.{name}, which is "
            "not a tensor or storage constructor; reading it would need arbitrary unpickling, which can run code."
        )
        raise CheckpointError(msg)

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            msg = f"TorchScript archive {self._path}: unexpected persistent id {pid!r} in data.pkl."
            raise CheckpointError(msg)
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                raw = bytearray(self._zf.read(name))
            except (KeyError, zipfile.BadZipFile, OSError, EOFError) as err:
                msg = f"TorchScript archive {self._path}: cannot read storage {name} ({err})."
                raise CheckpointError(msg) from err
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                msg = (
                    f"TorchScript archive {self._path}: storage {name} holds {len(raw)} bytes, expected "
                    f"{int(numel) * itemsize} ({numel} × {storage_type.dtype})."
                )
                raise CheckpointError(msg)
            flat = torch.frombuffer(raw, dtype=storage_type.dtype) if raw else torch.empty(0, dtype=storage_type.dtype)
            self._storages[key] = flat
        return self._storages[key]

    def _rebuild_tensor(
        self, storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_unused: Any
    ) -> torch.Tensor:
        # Bounds-check the view before making it: a crafted archive must not read outside its own storage.
        if not isinstance(storage, torch.Tensor) or len(size) != len(stride):
            msg = f"TorchScript archive {self._path}: malformed tensor record (size {size}, stride {stride})."
            raise CheckpointError(msg)
        if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
            msg = f"TorchScript archive {self._path}: negative size/stride/offset in a tensor record."
            raise CheckpointError(msg)
        if all(s > 0 for s in size):
            last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
            if last >= storage.numel():
                msg = (
                    f"TorchScript archive {self._path}: tensor view (offset {offset}, size {tuple(size)}, stride "
                    f"{tuple(stride)}) reaches past its storage of {storage.numel()} elements."
                )
                raise CheckpointError(msg)
        return storage.as_strided(tuple(size), tuple(stride), offset)


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read every tensor attribute of a TorchScript archive's module tree, without loading the archive's code.

    A TorchScript archive is a zip holding ``<name>/data.pkl`` (the pickled module tree), ``<name>/data/<key>``
    (raw little-endian storages), ``<name>/code/`` (TorchScript source) and ``<name>/constants.pkl``. This reads
    only ``data.pkl`` and the storages. Why that is safe: a pickle can call only what its GLOBAL/INST/OBJ/EXT
    opcodes obtain from ``find_class``, and this unpickler's ``find_class`` returns nothing but
    (a) an inert placeholder class for ``__torch__.*`` module classes that merely stores attribute dicts,
    (b) dtype markers for ``torch.*Storage``, (c) a bounds-checked tensor-view builder over bytes read from the zip,
    (d) ``collections.OrderedDict`` and identity list / type-tag builders. Every other global is refused, so no
    function named by the file can run, and the code in ``code/`` is never compiled or executed (``torch.jit.load``
    would).

    Keys are dotted attribute paths (``visual.conv1.weight``). Plain tensor attributes such as cached attention
    masks come out too; the converters drop the ones they do not need.

    Args:
        path: the archive.

    Returns:
        The tensors by dotted attribute path.

    Raises:
        CheckpointError: the zip is broken, a storage is missing or short, or data.pkl needs other globals.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        msg = f"Cannot open TorchScript archive {path} (truncated or corrupt zip?): {err}"
        raise CheckpointError(msg) from err
    with zf:
        pkl_names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            msg = f"{path} is not a TorchScript archive: expected one '<name>/data.pkl', found {pkl_names}."
            raise CheckpointError(msg)
        prefix = pkl_names[0][: -len("data.pkl")]
        try:
            data = zf.read(pkl_names[0])
            root = _TorchScriptUnpickler(data, zf, prefix, path).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError) as err:
            msg = f"Cannot read TorchScript archive {path} (truncated or corrupt?): {err}"
            raise CheckpointError(msg) from err
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", tensors, seen=set())
    if not tensors:
        msg = f"TorchScript archive {path} holds no tensors."
        raise CheckpointError(msg)
    return tensors


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, _ScriptObject):
        for name, value in getattr(obj, "attributes", {}).items():
            key = f"{prefix}{name}"
            if isinstance(value, torch.Tensor):
                out[key] = value
            elif isinstance(value, _ScriptObject):
                _collect_tensors(value, f"{key}.", out, seen)


# ---------------------------------------------------------------------------------------------------------------
# Loading into a module


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_into` did: keys loaded, and (when allowed) keys left at their init or ignored."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str | Path,
    strict: bool = True,
    allow_partial: bool = False,
) -> LoadReport:
    """Copy ``state_dict`` into ``module`` after checking names and shapes.

    Args:
        module: the target module.
        state_dict: converted weights (names as in ``module.state_dict()``).
        source: the file the weights came from; named in every error.
        strict: if True, keys the module does not have are an error.
        allow_partial: if True, module keys absent from ``state_dict`` keep their current values.

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointError: a shape differs (always), a key is unexpected (``strict``), or a key is missing
            (unless ``allow_partial``). The message names the file, the keys, and expected/found shapes.
    """
    expected = module.state_dict()
    missing = tuple(k for k in expected if k not in state_dict)
    unexpected = tuple(k for k in state_dict if k not in expected)
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(v.shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch for {_listing(mismatched)}")
    if unexpected and strict:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if missing and not allow_partial:
        problems.append(f"missing keys {_listing(missing)}")
    if problems:
        msg = f"Weights from {source} do not fit {type(module).__name__}: " + "; ".join(problems) + "."
        raise CheckpointError(msg)
    usable = {k: v for k, v in state_dict.items() if k in expected}
    module.load_state_dict(usable, strict=False)
    return LoadReport(loaded=tuple(usable), missing=missing, unexpected=unexpected)


def _listing(items: tuple[str, ...] | list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED_KEYS])
    more = len(items) - _MAX_LISTED_KEYS
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"
