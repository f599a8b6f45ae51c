"""Selective scan (the S6 recurrence of Mamba-1) for CPU and GPU, with mamba-ssm's `selective_scan_fn` semantics.

From "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (Gu & Dao, arXiv:2312.00752). Per batch
element and channel d, with state h of size n:

    h_t = exp(delta_t·A_d) ⊙ h_{t-1} + delta_t·u_t·B_t,    y_t = C_t·h_t + D_d·u_t,    y *= silu(z) if z is given,

where delta = softplus(delta + delta_bias) when asked. Backends:

- ``"cuda"``: mamba-ssm's CUDA kernel (needs mamba-ssm and CUDA tensors).
- ``"native"``: a fused C++ CPU kernel (`csrc/selective_scan.cpp`): state in vector registers, softplus, D and the
  z gate fused, rows over ``torch.get_num_threads()`` threads, with its own backward (states recomputed per row,
  reverse adjoint scan; gradients bit-identical for any thread count). Built at first use (about a second);
  checked against `selective_scan_ref`, forward and backward, once per process before use.
- ``"blocked"``: a stable two-level chunked scan in plain PyTorch (any device). Chunks of 32 steps are scanned
  together with running products of their decays, then a carry over chunks gives each chunk its start state.
  It only multiplies decays ≤ 1 (never divides, never exps a positive number), so it is exact to rounding for any
  decay strength, unlike exp(cumsum) or log-space forms, which overflow or lose accuracy. Channels are processed
  in blocks so temporaries stay near 16 MB on CPU. Its backward is an explicit reverse (adjoint) scan, run with
  the same blocked scan, recomputing the states block by block.
- ``"ref"``: `selective_scan_ref`, the sequential loop, the truth the others are tested against.

`selective_scan` with ``backend=None`` uses the module default (`set_default_backend`), which is automatic unless
set: ``"cuda"`` for CUDA tensors when mamba-ssm imports, ``"native"`` on CPU when it built and verified, else
``"blocked"`` (also while tracing or compiling, where a foreign call cannot be recorded).
"""

# ruff: noqa: N803 - A, B, C, D are the paper's and mamba-ssm's argument names (callers pass them by keyword)
from __future__ import annotations

import logging
import threading
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from mfuser_model.ops import _native
from mfuser_model.ops.scan_blocked import BlockedKernel
from mfuser_model.ops.scan_reference import check_inputs, compute_dtype, selective_scan_ref

try:  # Optional CUDA kernel; the module must import without it.
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_selective_scan_fn
except ImportError:
    _mamba_selective_scan_fn = None

__all__ = [
    "BACKENDS",
    "BlockedKernel",
    "available_backends",
    "get_default_backend",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
    "set_default_backend",
]

_logger = logging.getLogger(__name__)

BACKENDS = ("ref", "blocked", "native", "cuda")

_default_backend: str | None = None


# ----------------------------------------------------------------------------------------------------------------
# The layout shared by the blocked and native backends
# ----------------------------------------------------------------------------------------------------------------
def _group_layout(t: Tensor, dtype: torch.dtype) -> Tensor:
    """(b, n, L) or (b, g, n, L) -> contiguous (b, g, n, L) (a view when it already is)."""
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return t.to(dtype).contiguous()


def _from_group_layout(grad: Tensor, like: Tensor) -> Tensor:
    """(b, g, n, L) gradient -> the shape and dtype of the original B or C."""
    if like.dim() == 3:
        grad = grad.squeeze(1)
    return grad.to(like.dtype)


class _Prepared(NamedTuple):
    u: Tensor  # (b, d, L)
    delta: Tensor  # (b, d, L), before bias and softplus
    A: Tensor  # (d, n)
    Bg: Tensor  # (b, g, n, L)
    Cg: Tensor  # (b, g, n, L)
    D: Tensor | None  # (d,)
    z: Tensor | None  # (b, d, L)
    delta_bias: Tensor | None  # (d,)


def _prepare(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None,
) -> _Prepared:
    """Cast to the compute dtype and make contiguous (no copies when already so); B, C as (b, g, n, L)."""
    ct = compute_dtype(u, delta, A, B, C, D, z, delta_bias)

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(ct).contiguous()

    return _Prepared(
        u=cast(u), delta=cast(delta), A=cast(A), Bg=_group_layout(B, ct), Cg=_group_layout(C, ct), D=cast(D),
        z=cast(z), delta_bias=cast(delta_bias),
    )


class _ScanKernel(Protocol):
    """Forward and backward of the scan on `_Prepared` tensors (blocked and native implement it)."""

    name: str

    def forward(
        self, u: Tensor, delta: Tensor, A: Tensor, Bg: Tensor, Cg: Tensor, D: Tensor | None, z: Tensor | None,
        delta_bias: Tensor | None, delta_softplus: bool, want_last: bool,
    ) -> tuple[Tensor, Tensor | None]: ...

    def backward(
        self, u: Tensor, delta: Tensor, A: Tensor, Bg: Tensor, Cg: Tensor, D: Tensor | None, z: Tensor | None,
        delta_bias: Tensor | None, delta_softplus: bool, dout: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]: ...


class _ScanFn(torch.autograd.Function):
    """Autograd around a `_ScanKernel`. Saves only the inputs; the backward recomputes what it needs."""

    @staticmethod
    def forward(
        ctx,  # noqa: ANN001
        kernel: _ScanKernel,
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None,
        z: Tensor | None,
        delta_bias: Tensor | None,
        delta_softplus: bool,
        return_last_state: bool,
    ):
        p = _prepare(u, delta, A, B, C, D, z, delta_bias)
        out, last = kernel.forward(*p[:7], p.delta_bias, delta_softplus, return_last_state)
        ctx.kernel = kernel
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        out = out.to(u.dtype)
        if return_last_state:
            ctx.mark_non_differentiable(last)  # as in mamba-ssm: the final state carries no gradient
            return out, last
        return out

    @staticmethod
    def backward(ctx, dout: Tensor, *_unused: Tensor):  # noqa: ANN001
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        p = _prepare(u, delta, A, B, C, D, z, delta_bias)
        du, ddelta, dA, dB, dC, dD, dz, dbias = ctx.kernel.backward(
            *p[:7], p.delta_bias, ctx.delta_softplus, dout.to(p.u.dtype).contiguous()
        )
        return (
            None,
            du.to(u.dtype),
            ddelta.to(delta.dtype),
            dA.to(A.dtype),
            _from_group_layout(dB, B),
            _from_group_layout(dC, C),
            None if D is None else dD.to(D.dtype),
            None if z is None else dz.to(z.dtype),
            None if delta_bias is None else dbias.to(delta_bias.dtype),
            None,
            None,
        )


# ----------------------------------------------------------------------------------------------------------------
# Native kernel: built and verified once per process
# ----------------------------------------------------------------------------------------------------------------
_native_lock = threading.Lock()
_native_state: dict[str, object] = {}


def _verify_kernel(kernel: _ScanKernel) -> str | None:
    """Compare a kernel's forward and backward with `selective_scan_ref` on small problems; None if they agree.

    Covers both dtypes, d_state 16 (the specialised path) and an odd one (the generic path), z and no z, and grouped
    B/C. Returns a description of the first mismatch. Runs with autograd on even when the first scan call (which
    triggers it) happens under `torch.no_grad()` or `torch.inference_mode()`.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _compare_with_reference(kernel)


def _compare_with_reference(kernel: _ScanKernel) -> str | None:
    gen = torch.Generator().manual_seed(0)
    cases = [  # (dtype, n, groups, with_z, rtol)
        (torch.float64, 16, 1, True, 1e-9),
        (torch.float64, 5, 2, False, 1e-9),
        (torch.float32, 16, 1, False, 1e-4),
        (torch.float32, 8, 1, True, 1e-4),
        (torch.float32, 32, 2, True, 1e-4),
    ]
    for dtype, n, groups, with_z, rtol in cases:
        batch, dim, length = 2, 4, 37
        bc_shape = (batch, n, length) if groups == 1 else (batch, groups, n, length)
        inputs = {
            "u": torch.randn(batch, dim, length, generator=gen, dtype=dtype),
            "delta": torch.rand(batch, dim, length, generator=gen, dtype=dtype) - 2,
            "A": -torch.rand(dim, n, generator=gen, dtype=dtype) * 4,
            "B": torch.randn(bc_shape, generator=gen, dtype=dtype),
            "C": torch.randn(bc_shape, generator=gen, dtype=dtype),
            "D": torch.randn(dim, generator=gen, dtype=dtype),
            "z": torch.randn(batch, dim, length, generator=gen, dtype=dtype) if with_z else None,
            "delta_bias": torch.rand(dim, generator=gen, dtype=dtype),
        }
        leaves = {k: v.requires_grad_() for k, v in inputs.items() if v is not None}
        dout = torch.randn(batch, dim, length, generator=gen, dtype=dtype)
        results = []
        for out, last in (
            selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True),
            _ScanFn.apply(kernel, *inputs.values(), True, True),
        ):
            grads = torch.autograd.grad(out, list(leaves.values()), dout)
            results.append([out.detach(), last, *grads])
        names = ["out", "last_state", *(f"grad {k}" for k in leaves)]
        for name, ref, got in zip(names, *results, strict=True):
            scale = ref.abs().max().clamp_min(1e-30)
            err = (got - ref).abs().max() / scale
            if not bool(err <= rtol):  # also catches NaN
                return f"{name} differs from selective_scan_ref by {float(err):.2e} (relative to its max) at " \
                       f"{dtype}, d_state={n}, groups={groups}, z={'yes' if with_z else 'no'}"
    return None


def _native_kernel() -> _native.NativeKernel | None:
    """The native kernel if it built and passed `_verify_kernel` (both done once per process), else None."""
    with _native_lock:
        if "kernel" not in _native_state:
            kernel = None
            lib = _native.load()
            if lib is not None:
                candidate = _native.NativeKernel(lib)
                try:
                    problem = _verify_kernel(candidate)  # autograd on, even under no_grad / inference_mode
                except (RuntimeError, MemoryError) as err:  # the kernel's own errors count as a failed check
                    problem = f"it raised {err!r}"
                if problem is None:
                    kernel = candidate
                else:
                    _logger.warning("Native selective scan failed its self-check (%s); using the blocked scan.",
                                    problem)
            _native_state["kernel"] = kernel
        return _native_state["kernel"]  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------------------------
def _check_backend(name: str) -> None:
    if name not in BACKENDS:
        msg = f"selective_scan: unknown backend {name!r}; valid: {', '.join(BACKENDS)} (or None for automatic)"
        raise ValueError(msg)


def set_default_backend(name: str | None) -> None:
    """Set the backend `selective_scan` uses when called with ``backend=None``; None restores automatic choice.

    Raises:
        ValueError: unknown name.
    """
    global _default_backend  # noqa: PLW0603 - one process-wide switch, deliberately not an environment variable
    if name is not None:
        _check_backend(name)
    _default_backend = name


def get_default_backend() -> str | None:
    """The backend set with `set_default_backend`, or None (automatic)."""
    return _default_backend


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on tensors of `device` here (building and verifying the native kernel if needed)."""
    device = torch.device(device)
    names = ["ref", "blocked"]
    if device.type == "cpu" and _native_kernel() is not None:
        names.append("native")
    if device.type == "cuda" and _mamba_selective_scan_fn is not None:
        names.append("cuda")
    return names


def resolve_backend(u: Tensor, backend: str | None = None) -> str:
    """The backend a call with this `u` and `backend` argument runs (the automatic choice made explicit)."""
    name = backend if backend is not None else _default_backend
    if name is not None:
        _check_backend(name)
        return name
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return "blocked"  # traceable: plain tensor ops, no foreign calls
    if u.is_cuda:
        return "cuda" if _mamba_selective_scan_fn is not None else "blocked"
    if u.device.type == "cpu" and _native_kernel() is not None:
        return "native"
    return "blocked"


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with mamba-ssm's `selective_scan_fn` semantics, differentiable on every backend.

    Args:
        u: (b, d, L) input.
        delta: (b, d, L) step size before bias and softplus.
        A: (d, n) real state matrix.
        B: (b, n, L), or (b, g, n, L) grouped (channel d uses group d // (d/g)).
        C: (b, n, L), or (b, g, n, L).
        D: (d,) skip, optional.
        z: (b, d, L) gate, optional: out *= silu(z).
        delta_bias: (d,) added to delta before the softplus, optional.
        delta_softplus: apply softplus to delta (+ bias).
        return_last_state: also return the final state (b, d, n) (no gradient flows through it).
        backend: "ref", "blocked", "native" or "cuda"; None uses the module default (see `resolve_backend`).

    Returns:
        out (b, d, L) in u's dtype, or (out, last_state).

    Raises:
        ValueError: bad shapes, unknown backend, or a backend that cannot take these tensors' device.
        RuntimeError: the requested backend is not available here (names what is missing).
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(u, backend)
    if name == "native" and backend is None and _default_backend is None and A.shape[1] > _native.MAX_STATE:
        name = "blocked"  # automatic choice: the native kernel keeps at most MAX_STATE states in registers
    if name == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "cuda":
        if _mamba_selective_scan_fn is None:
            msg = ("selective_scan backend 'cuda' needs mamba-ssm, which did not import; install the [cuda] extra "
                   "(pip install mamba-ssm==2.3.2 causal-conv1d==1.7.0) on a CUDA build of torch")
            raise RuntimeError(msg)
        if not u.is_cuda:
            msg = f"selective_scan backend 'cuda' needs CUDA tensors, got u on {u.device}"
            raise ValueError(msg)
        return _mamba_selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "native":
        if u.device.type != "cpu":
            msg = f"selective_scan backend 'native' runs on CPU tensors, got u on {u.device}"
            raise ValueError(msg)
        kernel = _native_kernel()
        if kernel is None:
            msg = (f"selective_scan backend 'native' is unavailable: building {_native.SOURCE} or its self-check "
                   "failed (see the logged warning)")
            raise RuntimeError(msg)
    else:
        kernel = BlockedKernel()
    return _ScanFn.apply(kernel, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
