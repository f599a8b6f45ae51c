"""Tokenizers for the text towers: CLIP's BPE (ships with open_clip, works offline) and SigLIP's SentencePiece.

CLIP and EVA02-CLIP share OpenAI's byte-pair vocabulary (49,408 tokens, ``<start_of_text>`` / ``<end_of_text>``,
padding 0). SigLIP's 32,000-token SentencePiece vocabulary is not shipped with any installed package: the
reference fetches it from the Hugging Face hub at model construction. Here the user names a local folder holding
either ``spiece.model`` (``google/siglip-large-patch16-384``; read with ``sentencepiece``) or ``tokenizer.json``
(``timm/ViT-B-16-SigLIP``; read with ``tokenizers``). SigLIP text is canonicalised like big_vision / open_clip
(lower case, punctuation removed), gets no start token, ends with ``</s>`` and is padded with ``</s>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from open_clip.tokenizer import SimpleTokenizer, canonicalize_text

from mfuser_model.errors import ConfigError

__all__ = ["TextTokenizer", "build_tokenizer", "siglip_tokenize"]

_SIGLIP_FILES = ("spiece.model", "tokenizer.json")


@dataclass(frozen=True)
class TextTokenizer:
    """Turns strings into fixed-length token-id rows for one text tower.

    Attributes:
        context_length: row length of :meth:`__call__`'s output.
        sot_id: start-of-text id prepended to each row, or None (SigLIP has none).
        eot_id: end-of-text id appended after the text.
        pad_id: id filling the row after the end token.
        encode: text -> ids without special tokens (for prompt learning, which inserts its own context tokens).
    """

    context_length: int
    sot_id: int | None
    eot_id: int
    pad_id: int
    encode: Callable[[str], list[int]]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Tokenize to ``(N, context_length)`` int64: [sot] text eot pad..., text truncated so eot always fits."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        start = [] if self.sot_id is None else [self.sot_id]
        room = self.context_length - len(start) - 1
        if room < 0:
            msg = f"context_length {self.context_length} leaves no room for the special tokens"
            raise ConfigError(msg)
        rows = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [*start, *self.encode(text)[:room], self.eot_id]
            rows[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return rows


def build_tokenizer(
    family: Literal["clip", "eva02", "siglip"],
    *,
    context_length: int,
    siglip_dir: str | Path | None = None,
) -> TextTokenizer:
    """Make the tokenizer a text tower expects.

    Args:
        family: ``"clip"`` / ``"eva02"`` (OpenAI BPE, offline) or ``"siglip"`` (needs ``siglip_dir``).
        context_length: row length (77 for CLIP/EVA, 64 for SigLIP, shorter for MFuser's prompt-learning).
        siglip_dir: folder with SigLIP's ``spiece.model`` or ``tokenizer.json`` (a download of
            ``google/siglip-large-patch16-384`` or ``timm/ViT-B-16-SigLIP``).

    Raises:
        ConfigError: unknown family, no/empty ``siglip_dir``, or the library that reads the file is missing.
    """
    if family in ("clip", "eva02"):
        bpe = SimpleTokenizer(context_length=context_length)
        return TextTokenizer(context_length, bpe.sot_token_id, bpe.eot_token_id, 0, bpe.encode)
    if family != "siglip":
        msg = f"unknown tokenizer family {family!r}; expected 'clip', 'eva02' or 'siglip'"
        raise ConfigError(msg)
    return _siglip_tokenizer(siglip_dir, context_length)


def siglip_tokenize(folder: str | Path | None, texts: Sequence[str], context_length: int) -> torch.Tensor:
    """Token ids ``(N, context_length)`` of ``texts`` with SigLIP's tokenizer read from ``folder``.

    Raises:
        ConfigError: ``folder`` is None or lacks the tokenizer files, or the library that reads them is missing.
    """
    return build_tokenizer("siglip", context_length=context_length, siglip_dir=folder)(texts)


def _siglip_tokenizer(folder: str | Path | None, context_length: int) -> TextTokenizer:
    if folder is None:
        msg = (
            "SigLIP's tokenizer is not bundled: download spiece.model (google/siglip-large-patch16-384) or "
            "tokenizer.json (timm/ViT-B-16-SigLIP) and pass its folder as siglip_dir"
        )
        raise ConfigError(msg)
    folder = Path(folder)
    found = [folder / name for name in _SIGLIP_FILES if (folder / name).is_file()]
    if not found:
        msg = f"SigLIP tokenizer folder {folder} holds none of {list(_SIGLIP_FILES)}"
        raise ConfigError(msg)
    path = found[0]
    if path.name == "spiece.model":
        encode, eos = _sentencepiece(path)
    else:
        encode, eos = _hf_tokenizers(path)

    def encode_canonical(text: str) -> list[int]:
        return encode(canonicalize_text(text))

    # SiglipTokenizer pads with </s> too (pad_token = eos_token = "</s>").
    return TextTokenizer(context_length, None, eos, eos, encode_canonical)


def _sentencepiece(path: Path) -> tuple[Callable[[str], list[int]], int]:
    try:
        import sentencepiece  # noqa: PLC0415 (optional: only SigLIP users with spiece.model need it)
    except ImportError as err:
        msg = f"reading {path} needs the 'sentencepiece' package: pip install sentencepiece==0.2.3"
        raise ConfigError(msg) from err
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    eos = sp.piece_to_id("</s>")
    if eos == sp.unk_id():
        msg = f"{path} has no '</s>' piece; is it SigLIP's spiece.model?"
        raise ConfigError(msg)
    return (lambda text: list(sp.encode(text))), eos


def _hf_tokenizers(path: Path) -> tuple[Callable[[str], list[int]], int]:
    try:
        from tokenizers import Tokenizer  # noqa: PLC0415 (optional: only SigLIP users with tokenizer.json need it)
    except ImportError as err:
        msg = f"reading {path} needs the 'tokenizers' package: pip install tokenizers==0.23.3"
        raise ConfigError(msg) from err
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust library raises its own exception type
        msg = f"cannot read tokenizer file {path}: {err}"
        raise ConfigError(msg) from err
    eos = tok.token_to_id("</s>")
    if eos is None:
        msg = f"{path} has no '</s>' token; is it a SigLIP tokenizer?"
        raise ConfigError(msg)
    return (lambda text: tok.encode(text, add_special_tokens=False).ids), eos
