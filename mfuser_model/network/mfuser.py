"""MFuser: a frozen VFM and a frozen VLM bridged by Mamba fusers, decoded with text queries (CVPR 2025).

"Mamba as a Bridge: Where Vision Foundation Models Meet Vision Language Models for Domain-Generalized
Semantic Segmentation", Zhang et al., CVPR 2025 - https://arxiv.org/abs/2504.03193

Pieces, in forward order: :class:`~mfuser_model.network.backbone.FusedBackbone` (DINOv2 + VLM + 24 MVFusers +
pyramid) -> :class:`~mfuser_model.network.text.PromptTextEncoder` (class names with learned context, cached in eval)
-> :class:`~mfuser_model.network.context_decoder.ContextDecoder` (MTEnhancer; text += gamma * offsets) ->
:class:`~mfuser_model.network.decode_head.MFuserHead` (one query per class) plus the pixel-text score map.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mfuser_model.config import ModelConfig
from mfuser_model.network.backbone import FusedBackbone
from mfuser_model.network.context_decoder import ContextDecoder
from mfuser_model.network.decode_head import MFuserHead, semantic_scores
from mfuser_model.network.encoders import EncoderSpec
from mfuser_model.network.text import PromptTextEncoder, build_text_tower

__all__ = ["MFuser", "MFuserOutput", "build_mfuser", "tokenize_class_names"]


class MFuserOutput(NamedTuple):
    """Everything the losses need; ``class_logits[-1]`` / ``mask_logits[-1]`` are the final predictions."""

    class_logits: list[torch.Tensor]  # 10 x (B, K, K+1)
    mask_logits: list[torch.Tensor]  # 10 x (B, K, H/4, W/4)
    score_map: torch.Tensor  # (B, K, h, w) pixel-text similarity / temperature at the token grid


class MFuser(nn.Module):
    """The MFuser segmentor. Input: (B, 3, H, W) CLIP-normalised RGB; see :meth:`forward` and :meth:`predict`."""

    def __init__(self, config: ModelConfig, token_ids: torch.Tensor, device=None, dtype=None) -> None:  # noqa: ANN001
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.config = config
        c = config
        vfm_spec = EncoderSpec(c.vfm_dim, c.depth, c.vfm_heads, c.patch_size, c.img_size)
        vlm_spec = EncoderSpec(c.vlm_dim, c.depth, c.vlm_heads, c.patch_size, c.img_size)
        self.backbone = FusedBackbone(
            vlm_kind=c.vlm, vfm_spec=vfm_spec, vlm_spec=vlm_spec, text_dim=c.text_dim,
            out_indices=c.out_indices, d_state=c.d_state, vlm_drop_path=c.vlm_drop_path, **dd,
        )
        tower = build_text_tower(c.vlm, width=c.text_width, heads=c.text_heads, layers=c.text_layers,
                                 embed_dim=c.text_dim, vocab_size=c.text_vocab_size,
                                 context_length=c.text_context_length)
        self.text_encoder = PromptTextEncoder(tower, token_ids, c.num_context,
                                              pool="last" if c.vlm == "siglip" else "argmax")
        self.context_decoder = ContextDecoder(c.text_dim, width=c.context_width, num_heads=c.context_heads,
                                              num_layers=c.context_layers, d_state=c.d_state, **dd)
        # The reference sets gamma to 1e-4 and then re-initialises it with trunc_normal (std 1); we keep the
        # effective behaviour so reference checkpoints and recipes transfer.
        self.gamma = nn.Parameter(torch.empty(c.text_dim, **dd))
        nn.init.trunc_normal_(self.gamma)
        self.head = MFuserHead(
            in_channels=c.vfm_dim + c.vlm_dim, text_dim=c.text_dim, num_classes=c.num_classes,
            hidden_dim=c.head_dim, num_heads=c.head_heads, num_decoder_layers=c.head_decoder_layers,
            num_pixel_decoder_layers=c.head_pixel_decoder_layers, decoder_ffn_dim=c.head_ffn_dim,
            pixel_decoder_ffn_dim=c.head_ffn_dim, **dd,
        )
        # SigLIP scores are calibrated by the checkpoint's logit scale and bias; CLIP-style models use 1/tau.
        self.register_buffer("logit_scale", torch.tensor(math.log(1.0 / c.temperature)), persistent=True)
        self.register_buffer("logit_bias", torch.tensor(0.0), persistent=True)
        self.freeze_encoders(c.freeze_encoders)

    def frozen_modules(self) -> list[nn.Module]:
        """The pretrained parts MFuser keeps frozen: both image encoders and the text tower."""
        return [self.backbone.vfm, self.backbone.vlm, self.text_encoder.tower]

    def freeze_encoders(self, frozen: bool = True) -> None:
        """Set requires_grad of the encoders; they then receive no gradient at all."""
        for module in self.frozen_modules():
            module.requires_grad_(not frozen)

    def text_embeddings(self, batch: int) -> torch.Tensor:
        """(B, K, C) class embeddings before the image-dependent refinement."""
        return self.text_encoder().unsqueeze(0).expand(batch, -1, -1)

    def forward(self, images: torch.Tensor) -> MFuserOutput:
        """images (B, 3, H, W) -> class and mask logits of every decoder stage and the score map."""
        feats = self.backbone(images)
        b = images.shape[0]
        text = self.text_embeddings(b)
        dense_tokens = feats.dense_embedding.flatten(2).transpose(1, 2)  # (B, h*w, C)
        visual = torch.cat([feats.global_embedding.unsqueeze(1), dense_tokens], dim=1)
        text = text + self.gamma * self.context_decoder(text, visual)
        head_out = self.head(feats.features, text)
        score_map = torch.einsum("bchw,bkc->bkhw", F.normalize(feats.dense_embedding, dim=1),
                                 F.normalize(text, dim=-1))
        score_map = score_map * self.logit_scale.exp() + self.logit_bias
        return MFuserOutput(head_out.class_logits, head_out.mask_logits, score_map)

    def predict_lowres(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class scores (B, K, h, w) at the mask resolution (4x the token grid), before upsampling."""
        out = self(images)
        return semantic_scores(out.class_logits[-1], out.mask_logits[-1])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class scores (B, K, H, W) at the input resolution (softmax(class) x sigmoid(mask), summed)."""
        scores = self.predict_lowres(images)
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)


def tokenize_class_names(config: ModelConfig, tokenizer_dir: str | None = None) -> torch.Tensor:
    """(K, T) token ids of the class names as the reference makes them, T = ``config.name_length``.

    CLIP / EVA02: OpenAI BPE ``[SOS, name, EOS, 0...]`` (the vocabulary ships with open_clip). SigLIP: its
    SentencePiece tokenizer read from ``tokenizer_dir`` or the preset's ``weights.tokenizer`` folder.
    """
    from mfuser_model.weights.tokenizer import build_tokenizer  # noqa: PLC0415

    if config.tokenizer == "openai-clip-bpe":
        tokenizer = build_tokenizer("clip", context_length=config.name_length)
    else:
        tokenizer = build_tokenizer("siglip", context_length=config.name_length,
                                    siglip_dir=tokenizer_dir or config.weights.tokenizer)
    return tokenizer(list(config.class_names))


def build_mfuser(config: ModelConfig, token_ids: torch.Tensor | None = None, device=None) -> MFuser:  # noqa: ANN001
    """An MFuser with random weights (load pretrained encoders or a checkpoint with ``mfuser_model.weights``).

    ``token_ids`` come from a saved model when given; otherwise the class names are tokenized here.
    """
    if token_ids is None:
        token_ids = tokenize_class_names(config)
    return MFuser(config, token_ids, device=device)
