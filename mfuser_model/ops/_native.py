"""Build, load and call the fused C++ CPU selective-scan kernel (`csrc/selective_scan.cpp`).

The kernel is plain C++ behind an ``extern "C"`` interface, compiled with the system C++ compiler at first use into
a cache directory (torch's extension root, ``~/.cache/torch_extensions`` unless ``TORCH_EXTENSIONS_DIR`` says
otherwise) and loaded with ctypes. It needs no torch headers, so it builds in about a second, does not depend on
torch's C++ ABI, and ctypes releases the GIL while it runs. It spreads rows over ``torch.get_num_threads()`` plain
threads (no OpenMP: spinning barriers cost more than the kernel on a busy machine), and its gradients are
bit-identical whatever the thread count.

A failed build (no compiler, unsupported flags) logs one warning and leaves `load()` returning None; the caller
then falls back to the pure-PyTorch blocked scan.
"""

# ruff: noqa: N803 - A, B, C, D are the paper's and mamba-ssm's argument names (callers pass them by keyword)
from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["NativeKernel", "build_dir", "load"]

_logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "selective_scan.cpp"  # includes scan_rows.h and scan_vector.h beside it
_ABI_VERSION = 6
MAX_STATE = 256  # kMaxState in the kernel
_SLOTS = 8  # fixed row ranges with their own dB / dC partials: the reduction order never depends on threads
_STEPS_PER_THREAD = 32768  # ~0.1 ms of work per thread at d_state 16
# Tried in order. -march=native is safe because the cache key includes the CPU's feature flags.
_FLAG_SETS = (
    ["-O3", "-std=gnu++17", "-fPIC", "-shared", "-pthread", "-march=native", "-ffp-contract=fast"],
    ["-O3", "-std=gnu++17", "-fPIC", "-shared", "-pthread", "-ffp-contract=fast"],
)

_lock = threading.Lock()
_state: dict[str, ctypes.CDLL | None] = {}


def _cpu_signature() -> str:
    """The CPU's feature flags (Linux) or the machine name, so a cache shared between hosts never mixes builds."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _compiler() -> str | None:
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def build_dir() -> Path:
    """The directory the compiled library is cached in: torch's extension root, as `torch.utils.cpp_extension` has it.

    (Importing `torch.utils.cpp_extension` itself would log a CUDA_HOME warning on CPU machines.)
    """
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root).resolve() / "mfuser_selective_scan"


def _build(compiler: str) -> Path:
    """Compile the kernel into the cache (reused when the source, flags, compiler and CPU are unchanged)."""
    # The cache key covers the headers too: an edit to any of them rebuilds.
    source = b"".join(f.read_bytes() for f in sorted(SOURCE.parent.glob("*.[ch]*")))
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(source + repr((flags, version, _cpu_signature())).encode()).hexdigest()[:16]
        target = build_dir() / f"selective_scan_{key}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build to a private name and rename: concurrent processes (pytest-xdist, several nodes) never see a
        # half-written library.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        result = subprocess.run(
            [compiler, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            os.replace(tmp, target)
            return target
        Path(tmp).unlink(missing_ok=True)
        errors.append(f"{' '.join(flags)}: {result.stderr.strip()[-800:]}")
    msg = f"compiling {SOURCE} with {compiler} failed:\n" + "\n".join(errors)
    raise RuntimeError(msg)


def _bind(lib: ctypes.CDLL) -> None:
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"ss_forward_{suffix}")
        fwd.argtypes = [ptr, ptr, ptr, i32] + [ptr] * 7 + [i64] * 5 + [i32]
        fwd.restype = i32
        bwd = getattr(lib, f"ss_backward_{suffix}")
        bwd.argtypes = [ptr, ptr, ptr, i32] + [ptr] * 14 + [i64] * 6 + [i32]
        bwd.restype = i32
    for name in ("ss_abi_version", "ss_lanes_f32", "ss_lanes_f64"):
        getattr(lib, name).restype = i32


def load() -> ctypes.CDLL | None:
    """Build (first call only) and load the kernel library; None, after one logged warning, if that fails."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib = None
        compiler = _compiler()
        if compiler is None:
            _logger.warning("No C++ compiler (g++, c++, clang++) on PATH: the native selective scan is unavailable, "
                            "using the blocked PyTorch scan.")
        else:
            try:
                lib = ctypes.CDLL(str(_build(compiler)))
                _bind(lib)
                if lib.ss_abi_version() != _ABI_VERSION:
                    msg = f"{SOURCE} reports ABI {lib.ss_abi_version()}, expected {_ABI_VERSION}"
                    raise RuntimeError(msg)
            except (OSError, RuntimeError, AttributeError) as err:
                _logger.warning("Native selective scan unavailable, using the blocked PyTorch scan: %s", err)
                lib = None
        _state["lib"] = lib
        return lib


def _p(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _common_groups(Bg: Tensor, Cg: Tensor) -> tuple[Tensor, Tensor, int]:
    """B and C with the same group count G = lcm(g_B, g_C) (the kernel reads both with one channel -> group map).

    Each of the G groups lies inside one of B's (and C's) groups, so repeating groups gives the same values.
    """
    groups = math.lcm(Bg.shape[1], Cg.shape[1])
    return (Bg.repeat_interleave(groups // Bg.shape[1], dim=1), Cg.repeat_interleave(groups // Cg.shape[1], dim=1),
            groups)


def _fold_groups(grad: Tensor, groups: int) -> Tensor:
    """(b, G, n, L) gradient -> (b, groups, n, L), summing the repeated groups."""
    b, total, n, length = grad.shape
    return grad if total == groups else grad.view(b, groups, total // groups, n, length).sum(2)


def _pad_state(t: Tensor, n_pad: int, dim: int) -> Tensor:
    """Zero-pad the state dimension `dim` to n_pad; padded lanes keep h = 0 (A = 0, B = 0) and add nothing."""
    n = t.shape[dim]
    if n == n_pad:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [0, n_pad - n]
    return torch.nn.functional.pad(t, pad).contiguous()


class NativeKernel:
    """Forward and backward of the scan on prepared CPU tensors (the `_ScanKernel` protocol of selective_scan.py).

    Inputs are contiguous float32 or float64 CPU tensors: u, delta, z (b, d, L); A (d, n); Bg, Cg (b, g, n, L);
    D, delta_bias (d,). Apart from allocating outputs, no torch ops run around the kernel call: on a busy machine
    each parallel torch op costs a thread-pool wake-up, which took longer than the scan itself.
    """

    name = "native"

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        # Lanes per vector of the build (AVX-512: 16 floats); d_state is zero-padded to a multiple of it.
        self._lanes = {torch.float32: lib.ss_lanes_f32(), torch.float64: lib.ss_lanes_f64()}

    def _fn(self, kind: str, dtype: torch.dtype):
        suffix = {torch.float32: "f32", torch.float64: "f64"}[dtype]
        return getattr(self._lib, f"ss_{kind}_{suffix}")

    @staticmethod
    def _threads(tasks: int, steps: int) -> int:
        """Threads for `tasks` independent pieces of `steps` recurrence steps in all: torch's thread count, but no
        more threads than tasks, nor than 1 per _STEPS_PER_THREAD steps (a thread costs tens of µs to start)."""
        return max(1, min(torch.get_num_threads(), tasks, steps // _STEPS_PER_THREAD))

    @staticmethod
    def _check(rc: int, n: int, g: int, d: int) -> None:
        if rc == 2:
            msg = "native selective scan: out of memory for its workspace"
            raise MemoryError(msg)
        if rc != 0:
            msg = f"native selective scan rejected d_state={n}, groups={g}, d_inner={d} (needs 1 <= n <= 256)"
            raise RuntimeError(msg)

    def forward(
        self, u: Tensor, delta: Tensor, A: Tensor, Bg: Tensor, Cg: Tensor, D: Tensor | None, z: Tensor | None,
        delta_bias: Tensor | None, delta_softplus: bool, want_last: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Returns y (b, d, L), gated by silu(z) when z is given, and the last state (b, d, n) if asked."""
        b, d, L = u.shape
        n = Bg.shape[2]
        Bg, Cg, g = _common_groups(Bg, Cg)
        n_pad = -(-n // self._lanes[u.dtype]) * self._lanes[u.dtype]
        A, Bg, Cg = _pad_state(A, n_pad, 1), _pad_state(Bg, n_pad, 2), _pad_state(Cg, n_pad, 2)
        out = torch.empty_like(u)
        last = u.new_empty(b, d, n_pad) if want_last else None
        rc = self._fn("forward", u.dtype)(
            _p(u), _p(delta), _p(delta_bias), int(delta_softplus), _p(A), _p(Bg), _p(Cg), _p(D), _p(z), _p(out),
            _p(last), b, d, L, n_pad, g, self._threads(b * d, b * d * L),
        )
        self._check(rc, n, g, d)
        return out, None if last is None else last[..., :n]

    def backward(
        self, u: Tensor, delta: Tensor, A: Tensor, Bg: Tensor, Cg: Tensor, D: Tensor | None, z: Tensor | None,
        delta_bias: Tensor | None, delta_softplus: bool, dout: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """Returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias (None where the input is None); dB, dC (b, g, n, L)."""
        b, d, L = u.shape
        n, groups_b, groups_c = Bg.shape[2], Bg.shape[1], Cg.shape[1]
        Bg, Cg, g = _common_groups(Bg, Cg)
        n_pad = -(-n // self._lanes[u.dtype]) * self._lanes[u.dtype]
        A, Bg, Cg = _pad_state(A, n_pad, 1), _pad_state(Bg, n_pad, 2), _pad_state(Cg, n_pad, 2)
        slots = min(_SLOTS, b * d)
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dz = torch.empty_like(u) if z is not None else None
        dA = torch.empty_like(A)
        dD, dbias = u.new_empty(d), u.new_empty(d)
        dB, dC = torch.empty_like(Bg), torch.empty_like(Cg)
        dout = dout.contiguous()  # bound to a name: the buffer must outlive the call
        rc = self._fn("backward", u.dtype)(
            _p(u), _p(delta), _p(delta_bias), int(delta_softplus), _p(A), _p(Bg), _p(Cg), _p(D), _p(z), _p(dout),
            _p(du), _p(ddelta), _p(dz), _p(dA), _p(dD), _p(dbias), _p(dB), _p(dC), b, d, L, n_pad, g, slots,
            self._threads(slots, b * d * L),
        )
        self._check(rc, n, g, d)
        return (
            du,
            ddelta,
            dA[:, :n],
            _fold_groups(dB[:, :, :n], groups_b),
            _fold_groups(dC[:, :, :n], groups_c),
            dD if D is not None else None,
            dz,
            dbias if delta_bias is not None else None,
        )
