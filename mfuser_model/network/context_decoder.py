"""MTEnhancer and the context decoder: class embeddings refined with the image's own visual context.

The MTEnhancer layer runs self-attention over the K class queries, then one MVFuser over the "sandwich"
``[text; visual; text]``. The scan is causal, so the first text copy sees only text and the second copy has seen
every visual token; both ends are kept and added back. The context decoder projects text and visual tokens to a
small width (256), runs the layer(s), projects back and adds the result to the text through a learned ``gamma``.
"""

from __future__ import annotations

import torch
from torch import nn

from mfuser_model.network.mvfuser import MVFuser

__all__ = ["ContextDecoder", "MTEnhancer"]


class MTEnhancer(nn.Module):
    """One MTEnhancer layer at width ``dim`` (the reference: 256 wide, 4 heads, MLP ×4)."""

    def __init__(self, dim: int = 256, num_heads: int = 4, dropout: float = 0.1, d_state: int = 16,
                 scan_backend: str | None = None, device=None, dtype=None) -> None:  # noqa: ANN001
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.q_proj = nn.Linear(dim, dim, bias=False, **dd)
        self.k_proj = nn.Linear(dim, dim, bias=False, **dd)
        self.v_proj = nn.Linear(dim, dim, bias=False, **dd)
        self.attn_proj = nn.Linear(dim, dim, **dd)
        self.attn_drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.fuser = MVFuser(dim, d_state=d_state, scan_backend=scan_backend, **dd)
        self.norm3 = nn.LayerNorm(dim, **dd)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4, **dd), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(dim * 4, dim, **dd))
        self.mlp_drop = nn.Dropout(dropout)

    def _self_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, k, c = x.shape
        q, kk, v = (p(x).view(b, k, self.num_heads, c // self.num_heads).transpose(1, 2)
                    for p in (self.q_proj, self.k_proj, self.v_proj))
        out = nn.functional.scaled_dot_product_attention(q, kk, v)
        return self.attn_drop(self.attn_proj(out.transpose(1, 2).reshape(b, k, c)))

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """text (B, K, dim), visual (B, N, dim) -> refined text (B, K, dim)."""
        text = text + self._self_attention(self.norm1(text))
        k = text.shape[1]
        normed = self.norm2(text)
        out = self.fuser(torch.cat([normed, visual, normed], dim=1))
        text = text + out[:, :k] + out[:, -k:]
        return text + self.mlp_drop(self.mlp(self.norm3(text)))


class ContextDecoder(nn.Module):
    """Projects text (B, K, C) and visual context (B, N, C) to ``width``, runs MTEnhancer layers, back to C."""

    def __init__(self, visual_dim: int, width: int = 256, num_heads: int = 4, num_layers: int = 1,
                 dropout: float = 0.1, d_state: int = 16, scan_backend: str | None = None,
                 device=None, dtype=None) -> None:  # noqa: ANN001
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual_dim, **dd), nn.Linear(visual_dim, width, **dd),
                                         nn.LayerNorm(width, **dd))
        self.text_proj = nn.Sequential(nn.LayerNorm(visual_dim, **dd), nn.Linear(visual_dim, width, **dd))
        self.layers = nn.ModuleList(
            MTEnhancer(width, num_heads, dropout, d_state, scan_backend, **dd) for _ in range(num_layers))
        self.out_proj = nn.Sequential(nn.LayerNorm(width, **dd), nn.Linear(width, visual_dim, **dd))
        self.init_weights()

    def init_weights(self) -> None:
        """trunc_normal(0.02) Linears and unit LayerNorms as the reference's ``_init_weights``.

        The reference's walk also re-initialises the inner MVFuser's dt_proj (bias -> 0), erasing Mamba's dt
        initialisation; here parameters tagged ``_no_reinit`` keep their initialisation. A checkpoint trained with
        the reference loads either way.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if getattr(module.bias, "_no_reinit", False):
                    continue
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """text (B, K, C), visual (B, N, C) -> text offsets (B, K, C)."""
        memory = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.layers:
            x = layer(x, memory)
        return self.out_proj(x)
