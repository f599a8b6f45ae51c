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
import math
import threading
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from mfuser_model.ops import _native

try:  # Optional CUDA kernel; the module must import without it.
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_selective_scan_fn
except ImportError:
    _mamba_selective_scan_fn = None

__all__ = [
    "BACKENDS",
    "available_backends",
    "get_default_backend",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
    "set_default_backend",
]

_logger = logging.getLogger(__name__)

BACKENDS = ("ref", "blocked", "native", "cuda")
CHUNK = 32  # steps per chunk of the blocked scan; 16 to 32 is fastest and keeps decay products out of subnormals
_CPU_BLOCK_BYTES = 16 * 2**20  # per (b, d-block, L, n) temporary: stays in cache-friendly sizes, no page-fault storms
_CUDA_BLOCK_BYTES = 256 * 2**20
_SOFTPLUS_THRESHOLD = 20.0  # F.softplus's default: linear above it

_default_backend: str | None = None


# ----------------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------------
def selective_scan_ref(
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
) -> Tensor | tuple[Tensor, Tensor]:
    """Sequential selective scan, one step per token (mamba-ssm's `selective_scan_ref`, kept in float64 for float64).

    Args:
        u: r(B D L) input.
        delta: r(B D L) step size (before bias and softplus).
        A: r(D N) state matrix (diagonal per channel; negative for a stable scan).
        B: r(B N L), or r(B G N L) with G groups of D/G channels each.
        C: r(B N L), or r(B G N L).
        D: r(D) skip, optional.
        z: r(B D L) gate, optional: the output is multiplied by silu(z).
        delta_bias: r(D), added to delta before the softplus.
        delta_softplus: apply softplus to delta (+ bias).
        return_last_state: also return the state after the last step.

    Returns:
        out r(B D L) in u's dtype; with `return_last_state`, also last_state r(B D N) in the compute dtype
        (float64 if any input is float64, else float32).
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    ct = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u = u.to(ct)
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    A, B, C = A.to(ct), B.to(ct), C.to(ct)
    if B.dim() == 4:  # B G N L -> B (G H) N L
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B.dim() == 3:
        delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        delta_b_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    x = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for i in range(length):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        if C.dim() == 3:
            ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
        else:
            ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, i]))
    out = torch.stack(ys, dim=2)  # (B, D, L)
    if D is not None:
        out = out + u * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


# ----------------------------------------------------------------------------------------------------------------
# Input checks and the layout shared by the blocked and native backends
# ----------------------------------------------------------------------------------------------------------------
def _shape_error(name: str, tensor: Tensor, expected: str) -> ValueError:
    return ValueError(f"selective_scan: {name} has shape {tuple(tensor.shape)}, expected {expected}")


def _check_inputs(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None,
) -> None:
    if u.dim() != 3 or u.shape[2] == 0:
        raise _shape_error("u", u, "(batch, d_inner, L) with L >= 1")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise _shape_error("delta", delta, f"{tuple(u.shape)} like u")
    if A.is_complex():
        msg = "selective_scan: complex A is not supported (Mamba-1 uses real A)"
        raise ValueError(msg)
    if A.dim() != 2 or A.shape[0] != dim:
        raise _shape_error("A", A, f"({dim}, d_state)")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3 and tuple(t.shape) == (batch, n, length):
            continue
        if t.dim() == 4 and tuple(t.shape) == (batch, t.shape[1], n, length) and t.shape[1] > 0 \
                and dim % t.shape[1] == 0:
            continue
        raise _shape_error(name, t, f"({batch}, {n}, {length}) or ({batch}, groups dividing {dim}, {n}, {length})")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise _shape_error(name, t, f"({dim},)")
    if z is not None and z.shape != u.shape:
        raise _shape_error("z", z, f"{tuple(u.shape)} like u")


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


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
    ct = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)

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
# Blocked scan (pure PyTorch, any device)
# ----------------------------------------------------------------------------------------------------------------
def _chunk_scan_(a: Tensor, h: Tensor, prod: Tensor, reverse: bool = False) -> Tensor:
    """In place, for a, h, prod of shape (rows, K, T, n), sequence position = k·T + t: on entry h holds x, on exit

    forward: h_i = a_i ⊙ h_{i-1} + x_i (h_{-1} = 0);    reverse: h_i = a_i ⊙ h_{i+1} + x_i (h_{KT} = 0).

    Inside each chunk the recurrence runs for all K chunks at once while prod, the running product of the chunk's
    decays (≤ 1 when a ≤ 1), is kept; a carry over chunks then gives each chunk its start state s, and
    h += prod ⊙ s. Python steps: T + K instead of K·T. prod is scratch space.
    """
    rows, n_chunks, t_len, n = h.shape
    first, last = (t_len - 1, 0) if reverse else (0, t_len - 1)
    step = 1 if reverse else -1  # offset of the previous position in scan order
    prod[:, :, first] = a[:, :, first]
    for t in range(t_len - 2, -1, -1) if reverse else range(1, t_len):
        h[:, :, t].addcmul_(a[:, :, t], h[:, :, t + step])
        torch.mul(prod[:, :, t + step], a[:, :, t], out=prod[:, :, t])
    if n_chunks > 1:
        starts = h.new_zeros(rows, n_chunks, n)
        state = h.new_zeros(rows, n)
        for k in range(n_chunks - 2, -1, -1) if reverse else range(1, n_chunks):
            state = torch.addcmul(h[:, k + step, last], prod[:, k + step, last], state)
            starts[:, k] = state
        h.addcmul_(prod, starts[:, :, None, :])
    return h


def _softplus(x: Tensor) -> Tensor:
    """F.softplus (threshold 20). On CPU as max(x, 0) + log1p(exp(-|x|)) with log1p(e) = log(w)·e/(w - 1), w = 1 + e
    (Goldberg's accurate form): torch's CPU softplus and log1p run one element at a time, this is twice as fast."""
    if x.device.type != "cpu":
        return F.softplus(x)
    e = torch.exp(-x.abs())
    w = 1 + e
    log1p = torch.where(w == 1, e, torch.log(w) * (e / (w - 1)))
    return torch.where(x > _SOFTPLUS_THRESHOLD, x, x.clamp_min(0) + log1p)


def _step_size(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    x = delta if delta_bias is None else delta + delta_bias[:, None]
    return _softplus(x) if delta_softplus else x


class BlockedKernel:
    """The blocked scan as a `_ScanKernel`: works on any device, temporaries bounded by channel blocks.

    Per block of k channels it uses a few (b, k, L', n) buffers, L' = L rounded up to the chunk (the tail is padded
    with no-op steps: decay 1, input 0). The buffers are allocated once per call and reused by every block, because
    fresh large allocations page-fault on every use.
    """

    name = "blocked"

    def __init__(self, chunk: int = CHUNK, block_bytes: int | None = None) -> None:
        self.chunk = chunk
        self.block_bytes = block_bytes

    def _geometry(self, u: Tensor, n: int) -> tuple[int, int, list[tuple[int, int]]]:
        """(chunk length T, number of chunks K, channel blocks)."""
        batch, dim, length = u.shape
        t_len = min(self.chunk, length)
        n_chunks = -(-length // t_len)
        budget = self.block_bytes or (_CUDA_BLOCK_BYTES if u.is_cuda else _CPU_BLOCK_BYTES)
        per_channel = batch * n_chunks * t_len * n * u.element_size()
        step = max(1, min(dim, budget // per_channel))
        return t_len, n_chunks, [(d0, min(dim, d0 + step)) for d0 in range(0, dim, step)]

    @staticmethod
    def _group_rows(Bt: Tensor, d0: int, d1: int, dim: int) -> Tensor:
        """The (b, 1 or d1-d0, L, n) B or C rows that channels d0..d1 read."""
        groups = Bt.shape[1]
        if groups == 1:
            return Bt
        index = torch.arange(d0, d1, device=Bt.device) // (dim // groups)
        return Bt.index_select(1, index)

    @staticmethod
    def _add_to_groups(grad: Tensor, per_channel: Tensor, d0: int, d1: int, dim: int) -> None:
        """grad (b, g, L, n) += the (b, d1-d0, L, n) per-channel terms, summed into their groups."""
        groups = grad.shape[1]
        if groups == 1:
            grad[:, 0] += per_channel.sum(1)
        else:
            grad.index_add_(1, torch.arange(d0, d1, device=grad.device) // (dim // groups), per_channel)

    @staticmethod
    def _buffers(u: Tensor, count: int, numel: int) -> list[Tensor]:
        return [u.new_empty(numel) for _ in range(count)]

    @staticmethod
    def _scan_block(
        decay: Tensor, h: Tensor, dt_blk: Tensor, x_blk: Tensor, A_blk: Tensor, B_blk: Tensor, prod: Tensor,
        t_len: int,
    ) -> None:
        """Fill decay = exp(dt·A) and h = x·B on the padded (b, k, KT, n) buffers, then scan h in place."""
        length = dt_blk.shape[-1]
        torch.mul(dt_blk[..., None], A_blk[None, :, None, :], out=decay[:, :, :length])
        decay[:, :, :length].exp_()  # exp of a non-positive number: ≤ 1
        torch.mul(x_blk[..., None], B_blk, out=h[:, :, :length])
        decay[:, :, length:] = 1
        h[:, :, length:] = 0
        b, k, padded, n = h.shape
        shape = (b * k, padded // t_len, t_len, n)
        _chunk_scan_(decay.view(shape), h.view(shape), prod.view(shape))

    def forward(
        self, u: Tensor, delta: Tensor, A: Tensor, Bg: Tensor, Cg: Tensor, D: Tensor | None, z: Tensor | None,
        delta_bias: Tensor | None, delta_softplus: bool, want_last: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Returns y (b, d, L), gated by silu(z) when z is given, and the last state (b, d, n) if asked."""
        batch, dim, length = u.shape
        n = A.shape[1]
        t_len, n_chunks, blocks = self._geometry(u, n)
        Bt, Ct = Bg.transpose(-1, -2).contiguous(), Cg.transpose(-1, -2).contiguous()  # (b, g, L, n)
        y = torch.empty_like(u)
        last = u.new_empty(batch, dim, n) if want_last else None
        with torch.no_grad():
            dt = _step_size(delta, delta_bias, delta_softplus)
            width = blocks[0][1] - blocks[0][0]
            bufs = self._buffers(u, 3, batch * width * n_chunks * t_len * n)
            for d0, d1 in blocks:
                shape = (batch, d1 - d0, n_chunks * t_len, n)
                decay, h, prod = (buf[: math.prod(shape)].view(shape) for buf in bufs)
                dt_blk = dt[:, d0:d1]
                x_blk = dt_blk * u[:, d0:d1]
                self._scan_block(decay, h, dt_blk, x_blk, A[d0:d1], self._group_rows(Bt, d0, d1, dim), prod, t_len)
                if last is not None:
                    last[:, d0:d1] = h[:, :, length - 1]
                y[:, d0:d1] = torch.linalg.vecdot(h[:, :, :length], self._group_rows(Ct, d0, d1, dim))
            if D is not None:
                y.addcmul_(u, D[:, None])
            if z is not None:
                y.mul_(F.silu(z))
        return y, last

    def backward(
        self, u: Tensor, delta: Tensor, A: Tensor, Bg: Tensor, Cg: Tensor, D: Tensor | None, z: Tensor | None,
        delta_bias: Tensor | None, delta_softplus: bool, dout: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """Returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias (None where the input is None); dB, dC (b, g, n, L).

        Adjoint: g_t = dL/dh_t = C_t·dy_t + a_{t+1} ⊙ g_{t+1}, the same recurrence run in reverse with the decays
        shifted by one step, computed with `_chunk_scan_(reverse=True)` after recomputing the states.
        """
        batch, dim, length = u.shape
        n = A.shape[1]
        t_len, n_chunks, blocks = self._geometry(u, n)
        Bt, Ct = Bg.transpose(-1, -2).contiguous(), Cg.transpose(-1, -2).contiguous()  # (b, g, L, n)
        padded = n_chunks * t_len
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dz = torch.empty_like(u) if z is not None else None
        dA = torch.empty_like(A)
        dD = torch.empty_like(D) if D is not None else None
        dBt, dCt = torch.zeros_like(Bt), torch.zeros_like(Ct)
        with torch.no_grad():
            dt = _step_size(delta, delta_bias, delta_softplus)
            width = blocks[0][1] - blocks[0][0]
            bufs = self._buffers(u, 5, batch * width * padded * n)
            for d0, d1 in blocks:
                shape = (batch, d1 - d0, padded, n)
                decay, h, prod, shifted, g = (buf[: math.prod(shape)].view(shape) for buf in bufs)
                dt_blk, u_blk, dout_blk = dt[:, d0:d1], u[:, d0:d1], dout[:, d0:d1]
                B_blk = self._group_rows(Bt, d0, d1, dim)
                C_blk = self._group_rows(Ct, d0, d1, dim)
                x_blk = dt_blk * u_blk
                self._scan_block(decay, h, dt_blk, x_blk, A[d0:d1], B_blk, prod, t_len)
                hv = h[:, :, :length]
                if z is not None:
                    z_blk = z[:, d0:d1]
                    y = torch.linalg.vecdot(hv, C_blk)
                    if D is not None:
                        y.addcmul_(u_blk, D[d0:d1, None])
                    sig = torch.sigmoid(z_blk)
                    dz[:, d0:d1] = dout_blk * y * sig * (1 + z_blk * (1 - sig))
                    dy = dout_blk * z_blk * sig
                else:
                    dy = dout_blk
                # Reverse scan: position t decays the state from t+1 by a_{t+1}.
                shifted[:, :, :-1] = decay[:, :, 1:]
                shifted[:, :, -1] = 0
                torch.mul(C_blk, dy[..., None], out=g[:, :, :length])
                g[:, :, length:] = 0
                view = (batch * (d1 - d0), n_chunks, t_len, n)
                _chunk_scan_(shifted.view(view), g.view(view), prod.view(view), reverse=True)
                gv = g[:, :, :length]
                # q_t = g_t ⊙ h_{t-1} ⊙ a_t: the gradient w.r.t. the log-decay dt_t·A (h_{-1} = 0).
                q = torch.mul(g, decay, out=shifted)
                q[:, :, 0] = 0
                q[:, :, 1:] *= h[:, :, :-1]
                qv = q[:, :, :length]
                g_b = torch.linalg.vecdot(gv, B_blk)  # (b, k, L)
                ddt[:, d0:d1] = torch.linalg.vecdot(qv, A[None, d0:d1, None, :]) + u_blk * g_b
                du_blk = dt_blk * g_b
                if D is not None:
                    du_blk.addcmul_(dy, D[d0:d1, None])
                    dD[d0:d1] = (dy * u_blk).sum((0, 2))
                du[:, d0:d1] = du_blk
                dA[d0:d1] = torch.einsum("bkln,bkl->kn", qv, dt_blk)
                grad_b = gv.mul_(x_blk[..., None])
                grad_c = hv.mul_(dy[..., None])
                self._add_to_groups(dBt, grad_b, d0, d1, dim)
                self._add_to_groups(dCt, grad_c, d0, d1, dim)
            ddelta = ddt
            if delta_softplus:  # d softplus(x)/dx = sigmoid(x), exactly 1 where F.softplus is linear
                x = delta if delta_bias is None else delta + delta_bias[:, None]
                ddelta = ddt * torch.where(x > _SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(x))
            dbias = ddelta.sum((0, 2)) if delta_bias is not None else None
        return du, ddelta, dA, dBt.transpose(-1, -2), dCt.transpose(-1, -2), dD, dz, dbias


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
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
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
