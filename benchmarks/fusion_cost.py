"""The paper's efficiency table: one MVFuser against self-attention over the concatenated tokens.

Setting (the paper's, inferred in the reference notes): EVA02 variant at 512², D = 1024, L = 2 x (36² + 1) = 2594.
FLOPs are counted with torch.utils.flop_counter (2 FLOPs per multiply-add) at batch 2 (the training batch per
GPU); that convention reproduces the paper's figures. The selective scan itself is a custom op the counter does
not see; its cost (about 9·b·d·N·L = 0.38 GFLOP here) is printed separately.
Also prints the trainable and frozen parameter counts of each full-size variant (built on the meta device).

Run: .venv/bin/python benchmarks/fusion_cost.py
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mfuser_model.config import load_model_config
from mfuser_model.network.mfuser import build_mfuser
from mfuser_model.network.mvfuser import MVFuser

D, L, BATCH = 1024, 2594, 2
PAPER = {"MVFuser": (1.67e6, 17.21e9), "self-attention": (4.2e6, 98.64e9)}


class ConcatSelfAttention(nn.Module):
    """The alternative the paper compares against: multi-head self-attention over [VFM; VLM] tokens.

    Written out (qkv Linear, q·kᵀ, softmax, ·v, out Linear; 4D² + 4D parameters like nn.MultiheadAttention)
    because the fused CPU attention kernels (nn.MultiheadAttention's fast path, SDPA's CPU flash kernel) are
    invisible to the FLOP counter.
    """

    def __init__(self, dim: int, heads: int = 16) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(dim=-1)
        out = attn @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def count(module: nn.Module) -> tuple[int, int]:
    module.eval()
    x = torch.randn(BATCH, L, D)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return sum(p.numel() for p in module.parameters()), counter.get_total_flops()


def main() -> None:
    torch.manual_seed(0)
    print(f"One fusion module, D={D}, L={L} (EVA02 + DINOv2 at 512², patch 14), batch {BATCH}, "
          "FLOPs = torch.utils.flop_counter (2 per multiply-add)")
    print(f"{'module':<16}{'params':>12}{'paper':>10}{'diff':>8}{'GFLOPs':>10}{'paper':>9}{'diff':>8}")
    for name, module in (("MVFuser", MVFuser(D)), ("self-attention", ConcatSelfAttention(D))):
        params, flops = count(module)
        p_ref, f_ref = PAPER[name]
        print(f"{name:<16}{params:>12,}{p_ref / 1e6:>9.2f}M{(params - p_ref) / p_ref:>+8.2%}"
              f"{flops / 1e9:>10.2f}{f_ref / 1e9:>9.2f}{(flops - f_ref) / f_ref:>+8.2%}")
    scan_flops = 9 * BATCH * (D // 2) * 16 * L
    print(f"(selective scan, not seen by the counter: ~{scan_flops / 1e9:.2f} GFLOP at 9·b·d·N·L)")

    print("\nFull-size variants (parameters):")
    print(f"{'preset':<22}{'trainable':>14}{'frozen':>15}{'total':>15}")
    for preset in ("mfuser-clip-large", "mfuser-eva02-large", "mfuser-siglip-large"):
        cfg = load_model_config(preset)
        with torch.device("meta"):
            model = build_mfuser(cfg, token_ids=torch.zeros(cfg.num_classes, cfg.name_length, dtype=torch.long))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        print(f"{preset:<22}{trainable:>14,}{frozen:>15,}{trainable + frozen:>15,}")
    print("Reference trainable counts: CLIP ~170.06M, EVA02 ~118.65M (incl. an unused 19x768 `random_text`),\n"
          "SigLIP ~170.39M (incl. 51.4M of adapter_proj1/2/3 the SigLIP forward never uses; not built here).")


if __name__ == "__main__":
    main()
