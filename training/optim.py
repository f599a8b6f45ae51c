"""Optimizer parameter groups and the learning-rate schedule (a pure function of the iteration).

MFuser's recipe: AdamW, lr 1e-4, weight decay 1e-4 (CLIP) / 1e-5 (EVA02, SigLIP); no decay on normalisation
weights (mmcv ``custom_keys={'norm': decay_mult 0}``), on the level/query embeddings (EVA02, SigLIP configs) and,
here, on parameters tagged ``_no_weight_decay`` (Mamba's ``A_log`` and ``D``; mmcv ignored the tag) and positional
embeddings. Frozen parameters are not handed to the optimizer at all. Schedule: mmcv ``PolyLrUpdaterHook`` (power
0.9, min_lr 1e-6) with a linear warm-up of 1,500 iterations from ratio 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from mfuser_model.config_io import NonNegFloat, NonNegInt, PosFloat, Range, UnitFloat, check_fields

__all__ = ["OptimConfig", "build_optimizer", "lr_at", "no_decay_reason", "param_groups", "set_lr"]

# Leaf-name markers of embeddings that get no weight decay.
_NO_DECAY_NAMES = ("pos_embed", "positional_embedding", "level_embed", "level_encoding", "query_embed",
                   "text_pos_embed", "cls_token", "reg_token", "mask_token", "relative_position_bias_table")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


_Beta = Annotated[float, Range(ge=0, lt=1)]  # torch.optim.AdamW refuses others


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and schedule numbers (defaults: the paper's EVA02 runs)."""

    lr: PosFloat = 1e-4
    weight_decay: NonNegFloat = 1e-5
    betas: tuple[_Beta, _Beta] = (0.9, 0.999)
    eps: PosFloat = 1e-8
    warmup_iters: NonNegInt = 1500
    warmup_ratio: UnitFloat = 1e-6
    power: NonNegFloat = 0.9
    min_lr: NonNegFloat = 1e-6
    grad_clip: PosFloat | None = None  # the reference does not clip

    def __post_init__(self) -> None:
        check_fields(self)


def no_decay_reason(name: str, param: nn.Parameter, module: nn.Module) -> str | None:
    """Why ``param`` (called ``name``, owned by ``module``) gets no weight decay, or None if it does."""
    if getattr(param, "_no_weight_decay", False):
        return "_no_weight_decay"
    leaf = name.rsplit(".", 1)[-1]
    if isinstance(module, _NORM_TYPES) or "norm" in module.__class__.__name__.lower() or "norm" in name:
        return "norm"
    if any(marker in name for marker in _NO_DECAY_NAMES) or leaf in _NO_DECAY_NAMES:
        return "embedding"
    return None


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups, ``decay`` and ``no_decay``, of the trainable parameters (frozen ones are left out).

    Each group carries ``"name"`` and ``"param_names"`` (for tests and logs).
    """
    owners = {f"{mname}.{pname}" if mname else pname: module
              for mname, module in model.named_modules() for pname, _ in module.named_parameters(recurse=False)}
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if no_decay_reason(name, param, owners[name]) else decay).append((name, param))
    groups = [
        {"name": "decay", "params": [p for _, p in decay], "param_names": [n for n, _ in decay],
         "weight_decay": weight_decay},
        {"name": "no_decay", "params": [p for _, p in no_decay], "param_names": [n for n, _ in no_decay],
         "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; the learning rate is set per iteration by :func:`set_lr`."""
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        msg = "the model has no trainable parameters"
        raise ValueError(msg)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_at(iteration: int, total_iters: int, cfg: OptimConfig) -> float:
    """Learning rate at 0-based ``iteration`` (mmcv poly + linear warm-up, ``by_epoch=False``).

    poly: ``(lr - min_lr) * (1 - it / total) ** power + min_lr``; during warm-up it is scaled by
    ``1 - (1 - it / warmup) * (1 - warmup_ratio)``, so it starts at ``warmup_ratio`` times the poly value.
    """
    progress = min(max(iteration, 0), total_iters) / max(total_iters, 1)
    regular = (cfg.lr - cfg.min_lr) * (1.0 - progress) ** cfg.power + cfg.min_lr
    if iteration < cfg.warmup_iters:
        k = (1.0 - iteration / cfg.warmup_iters) * (1.0 - cfg.warmup_ratio)
        return regular * (1.0 - k)
    return regular


def set_lr(optimizer: torch.optim.Optimizer, iteration: int, total_iters: int, cfg: OptimConfig) -> float:
    """Write :func:`lr_at` into every parameter group; returns it."""
    lr = lr_at(iteration, total_iters, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    return lr
