"""Text side of MFuser: the frozen text tower with learnable context tokens, and its eval-time cache.

Class names are embedded CoOp/DenseCLIP-style: ``[SOS, ctx_1..ctx_P, name tokens, EOS, pad]`` where the P
context vectors are learned and everything else goes through the frozen open_clip text tower. The reference
re-runs the text tower on every forward (and every sliding window); here, in eval mode, the result is cached
and recomputed only when a parameter it depends on changes (tracked through the tensors' version counters).
"""

from __future__ import annotations

import torch
from open_clip.model import _build_text_tower
from open_clip.transformer import TextTransformer
from torch import nn

from mfuser_model.network.encoders import VLMKind

__all__ = ["PromptTextEncoder", "build_text_tower"]


def build_text_tower(kind: VLMKind, *, width: int, heads: int, layers: int, embed_dim: int,
                     vocab_size: int, context_length: int) -> TextTransformer:
    """The open_clip text tower of each VLM (its config json's ``text_cfg``, numbers given explicitly).

    - ``clip``: OpenAI ViT-L/14 text (causal, QuickGELU, EOT pooling, projection matrix).
    - ``eva02``: EVA02-CLIP-L text (causal, GELU, EOT pooling, projection matrix).
    - ``siglip``: SigLIP text (bidirectional, last-token pooling, projection Linear with bias, LN eps 1e-6).
    """
    cfg: dict = {"context_length": context_length, "vocab_size": vocab_size, "width": width, "heads": heads,
                 "layers": layers}
    if kind == "siglip":
        # SigLIP's MLPs use the tanh approximation of GELU (Hugging Face's gelu_pytorch_tanh).
        cfg.update(no_causal_mask=True, proj_bias=True, pool_type="last", norm_kwargs={"eps": 1e-6},
                   act_kwargs={"approximate": "tanh"})
    return _build_text_tower(embed_dim, cfg, quick_gelu=(kind == "clip"))


class PromptTextEncoder(nn.Module):
    """Class-name embeddings with learnable context: ``forward() -> (K, embed_dim)``.

    Args:
        tower: the frozen open_clip text tower.
        token_ids: (K, T) int64 class-name token ids (``[SOS, name..., EOS, pad]``, T = 5 in the reference).
            Stored as a buffer so a saved model needs no tokenizer.
        num_context: P, the number of learnable context vectors (5 for CLIP and SigLIP, 8 for EVA02).
        pool: ``"argmax"`` takes the EOT position (CLIP, EVA02), ``"last"`` the last position (SigLIP).
    """

    def __init__(self, tower: TextTransformer, token_ids: torch.Tensor, num_context: int,
                 pool: str = "argmax") -> None:
        super().__init__()
        if pool not in ("argmax", "last"):
            msg = f"unknown text pooling {pool!r}; expected 'argmax' or 'last'"
            raise ValueError(msg)
        self.tower = tower
        self.pool = pool
        self.register_buffer("token_ids", token_ids.long(), persistent=True)
        width = tower.token_embedding.weight.shape[1]
        # The reference re-initialises contexts with trunc_normal (std 1) after construction; kept as is.
        self.contexts = nn.Parameter(torch.empty(1, num_context, width))
        nn.init.trunc_normal_(self.contexts)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def num_classes(self) -> int:
        """K, the number of class names."""
        return int(self.token_ids.shape[0])

    def _compute(self) -> torch.Tensor:
        ids = self.token_ids
        tower = self.tower
        tokens = tower.token_embedding(ids)  # (K, T, W)
        ctx = self.contexts.to(tokens.dtype).expand(ids.shape[0], -1, -1)
        x = torch.cat([tokens[:, :1], ctx, tokens[:, 1:]], dim=1)  # (K, T + P, W)
        length = x.shape[1]
        x = x + tower.positional_embedding[:length].to(x.dtype)
        mask = tower.attn_mask[:length, :length] if tower.attn_mask is not None else None
        x = tower.transformer(x, attn_mask=mask)
        x = tower.ln_final(x)
        if self.pool == "argmax":  # the EOT token has the largest id; it moved right by P positions
            pooled = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1) + self.contexts.shape[1]]
        else:
            pooled = x[:, -1]
        proj = tower.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj

    def _cache_key(self) -> tuple:
        # Version counters move on every in-place update (optimizer steps, load_state_dict's copy_), so the key
        # changes exactly when a weight the output depends on changes.
        tensors = [self.contexts, self.token_ids, *self.tower.parameters()]
        return tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)

    def forward(self) -> torch.Tensor:
        """(K, embed_dim) class embeddings; cached in eval mode while no parameter changes."""
        if self.training or (torch.is_grad_enabled() and self.contexts.requires_grad):
            self._cache = None
            return self._compute()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._compute())
        return self._cache[1]
