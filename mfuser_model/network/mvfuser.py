"""MVFuser: the Mamba co-adapter that fuses two token streams (MFuser, CVPR 2025).

"Mamba as a Bridge: Where Vision Foundation Models Meet Vision Language Models for Domain-Generalized
Semantic Segmentation", Zhang et al., CVPR 2025 - https://arxiv.org/abs/2504.03193

The module reads one sequence (for the backbone fusers: [VFM tokens; VLM tokens]) and returns offsets of the
same shape. Two branches split from one input projection:
- sequential: depthwise conv (k=3, 'same', no bias) -> SiLU -> x_proj -> selective scan (Mamba S6),
- spatial: depthwise conv (k=3, 'same', no bias) -> SiLU,
gated by a norm-before-gate RMSNorm, projected back and scaled by a learnable scalar that starts at 1e-3 so a
freshly initialised fuser barely perturbs the frozen encoders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mfuser_model.ops.selective_scan import selective_scan

__all__ = ["MVFuser", "RMSNormGated"]


class RMSNormGated(nn.Module):
    """RMSNorm of ``x`` then gated by ``silu(z)`` (mamba_ssm's ``RMSNorm(norm_before_gate=True)``)."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None) -> None:  # noqa: ANN001
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: (..., dim)."""
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float() * F.silu(z.float())).to(x.dtype)


class MVFuser(nn.Module):
    """Mamba-based fusion block of the reference ``adapter_module.MVFuser``.

    Args:
        d_model: token width D. The inner width of each branch is D/2 (in_proj D -> D, split in halves).
        d_state: SSM state size N.
        d_conv: depthwise conv kernel of both branches.
        dt_rank: rank of the delta projection; ``None`` means ceil(D/16) as in Mamba.
        dt_min, dt_max, dt_init_floor: range of the initial step sizes (Mamba's S6 initialisation).
        dropout: dropout after out_proj.
        init_scale: initial value of the learnable output scale.
        scan_backend: selective-scan backend (``None`` = the op's default choice).
    """

    def __init__(
            self,
            d_model: int,
            d_state: int = 16,
            d_conv: int = 3,
            dt_rank: int | None = None,
            dt_min: float = 1e-3,
            dt_max: float = 0.1,
            dt_init_floor: float = 1e-4,
            dropout: float = 0.1,
            init_scale: float = 1e-3,
            scan_backend: str | None = None,
            device=None,  # noqa: ANN001
            dtype=None,  # noqa: ANN001
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if d_model % 2:
            msg = f"MVFuser d_model must be even (it is split into two branches), got {d_model}"
            raise ValueError(msg)
        self.d_model = d_model
        self.d_inner = d_model // 2
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(d_model, d_model, bias=False, **dd)
        # 'same' padding with k=3 keeps the sequence length; each token sees one neighbour either side.
        self.conv_x = nn.Conv1d(self.d_inner, self.d_inner, d_conv, padding="same", groups=self.d_inner,
                                bias=False, **dd)
        self.conv_z = nn.Conv1d(self.d_inner, self.d_inner, d_conv, padding="same", groups=self.d_inner,
                                bias=False, **dd)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **dd)

        # Mamba's dt initialisation: weights keep the variance of the low-rank input, and the bias is the
        # inverse softplus of a log-uniform dt, so softplus(bias) starts in [dt_min, dt_max]
        # (inverse softplus as in https://github.com/pytorch/pytorch/issues/72759).
        dt_init_std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(torch.rand(self.d_inner, **dd) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True  # generic re-initialisation must leave this alone

        # S4D real initialisation: A = -(1..N) per channel, stored as log for positivity. fp32 on purpose.
        a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.norm = RMSNormGated(self.d_inner, eps=1e-5, **dd)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **dd)
        self.dropout = nn.Dropout(dropout)
        self.scale = nn.Parameter(torch.full((1,), init_scale, **dd))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, L, D) -> offsets (B, L, D)."""
        _, length, _ = tokens.shape
        xz = self.in_proj(tokens)  # (B, L, D)
        x, z = rearrange(xz, "b l (two h) -> two b h l", two=2)  # each (B, h, L)
        x = F.silu(self.conv_x(x))
        z = F.silu(self.conv_z(z))

        x_dbl = self.x_proj(rearrange(x, "b h l -> (b l) h"))  # (B*L, R + 2N)
        dt, b_ssm, c_ssm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # As in the reference, dt_proj is applied with its bias AND the bias goes to the scan as delta_bias, so the
        # step is softplus(W dt + 2 b). Mamba adds it once; released MFuser weights were trained with this form.
        dt = rearrange(self.dt_proj(dt), "(b l) h -> b h l", l=length)
        b_ssm = rearrange(b_ssm, "(b l) n -> b n l", l=length).contiguous()
        c_ssm = rearrange(c_ssm, "(b l) n -> b n l", l=length).contiguous()
        a = -torch.exp(self.A_log.float())  # (h, N)

        y = selective_scan(
            x.contiguous(), dt.contiguous(), a, b_ssm, c_ssm, self.D.float(),
            z=None, delta_bias=self.dt_proj.bias.float(), delta_softplus=True, backend=self.scan_backend,
        )  # (B, h, L)
        y = self.norm(rearrange(y, "b h l -> b l h"), rearrange(z, "b h l -> b l h"))
        return self.dropout(self.out_proj(y)) * self.scale
