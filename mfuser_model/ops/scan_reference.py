"""`selective_scan_ref`: the S6 recurrence as a plain sequential loop, the truth every other backend is checked against.

Same signature and semantics as mamba-ssm's `selective_scan_ref` (`mamba_ssm/ops/selective_scan_interface.py`).
"""

# ruff: noqa: N803 - A, B, C, D are the paper's and mamba-ssm's argument names (callers pass them by keyword)
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_inputs", "compute_dtype", "selective_scan_ref"]


def _shape_error(name: str, tensor: Tensor, expected: str) -> ValueError:
    return ValueError(f"selective_scan: {name} has shape {tuple(tensor.shape)}, expected {expected}")


def check_inputs(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None,
) -> None:
    """Raise ValueError naming the tensor whose shape breaks the scan's contract (every backend checks first)."""
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


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32: the precision every backend computes in."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


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
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    ct = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
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
