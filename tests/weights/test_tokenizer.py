"""Tokenizers: CLIP's BPE offline; SigLIP's from a folder the user names, with clear errors when it is missing."""

from __future__ import annotations

import sys

import open_clip
import pytest
import torch

from mfuser_model.errors import ConfigError
from mfuser_model.weights.tokenizer import build_tokenizer, siglip_tokenize


@pytest.mark.parametrize("family", ["clip", "eva02"])
def test_clip_tokenizer_matches_open_clip_offline(family):
    tokenizer = build_tokenizer(family, context_length=77)
    names = ["road", "traffic light", "motorcycle"]

    ids = tokenizer(names)

    assert ids.shape == (3, 77)
    assert torch.equal(ids, open_clip.tokenize(names))
    assert tokenizer.sot_id == 49406 and tokenizer.eot_id == 49407 and tokenizer.pad_id == 0


def test_short_context_truncates_text_but_keeps_the_end_token():
    tokenizer = build_tokenizer("clip", context_length=5)
    ids = tokenizer("a very long description of a traffic sign on a pole")
    assert ids.shape == (1, 5)
    assert ids[0, 0].item() == tokenizer.sot_id
    assert ids[0, -1].item() == tokenizer.eot_id


def test_encode_gives_name_tokens_without_specials_for_prompt_learning():
    tokenizer = build_tokenizer("clip", context_length=10)
    name = tokenizer.encode("bicycle")
    row = tokenizer("bicycle")[0].tolist()
    assert row[: len(name) + 2] == [tokenizer.sot_id, *name, tokenizer.eot_id]


def test_siglip_without_a_folder_says_what_to_download():
    with pytest.raises(ConfigError, match=r"spiece\.model.*siglip_dir"):
        build_tokenizer("siglip", context_length=64)


def test_siglip_tokenize_without_a_folder_is_a_config_error():
    with pytest.raises(ConfigError, match=r"SigLIP's tokenizer is not bundled"):
        siglip_tokenize(None, ["road"], 10)


def test_siglip_folder_without_tokenizer_files_is_named(tmp_path):
    with pytest.raises(ConfigError, match=rf"{tmp_path.name} holds none of \['spiece.model', 'tokenizer.json'\]"):
        build_tokenizer("siglip", context_length=64, siglip_dir=tmp_path)


def test_siglip_spiece_without_sentencepiece_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "spiece.model").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # make the import fail even where it is installed
    with pytest.raises(ConfigError, match=r"spiece\.model needs the 'sentencepiece' package"):
        build_tokenizer("siglip", context_length=64, siglip_dir=tmp_path)


def test_siglip_tokenizer_json_canonicalises_appends_and_pads_with_eos(tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="optional 'tokenizers' package not installed")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "traffic": 3, "light": 4}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))

    ids = siglip_tokenize(tmp_path, ["Traffic, LIGHT!"], 6)

    assert ids.tolist() == [[3, 4, 1, 1, 1, 1]]


def test_siglip_spiece_model_canonicalises_appends_and_pads_with_eos(tmp_path):
    spm = pytest.importorskip("sentencepiece", reason="optional 'sentencepiece' package not installed")
    corpus = ["traffic light", "traffic sign", "road", "sidewalk", "person rider car truck bus"] * 20
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=28,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # SigLIP's layout: <pad>=0, </s>=1, <unk>=2, no <s>
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))

    ids = build_tokenizer("siglip", context_length=12, siglip_dir=tmp_path)(["Traffic-Light."])[0].tolist()

    text_ids = sp.encode("trafficlight")
    assert ids[: len(text_ids) + 1] == [*text_ids, 1]
    assert ids[len(text_ids) + 1 :] == [1] * (12 - len(text_ids) - 1)
