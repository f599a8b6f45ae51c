"""The blocked selective scan in plain PyTorch (any device), forward and explicit adjoint backward.

Chunks of ``CHUNK`` steps are scanned together with running products of their decays, then a carry over chunks
gives each chunk its start state. Only decays ≤ 1 are multiplied (never divided, never exp of a positive number),
so it is exact to rounding for any decay strength. Channels run in blocks so temporaries stay near 16 MB on CPU.
"""

# ruff: noqa: N803 - A, B, C, D are the paper's and mamba-ssm's argument names (callers pass them by keyword)
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CHUNK", "BlockedKernel"]

CHUNK = 32  # steps per chunk of the blocked scan; 16 to 32 is fastest and keeps decay products out of subnormals
_CPU_BLOCK_BYTES = 16 * 2**20  # per (b, d-block, L, n) temporary: stays in cache-friendly sizes, no page-fault storms
_CUDA_BLOCK_BYTES = 256 * 2**20
_SOFTPLUS_THRESHOLD = 20.0  # F.softplus's default: linear above it


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
