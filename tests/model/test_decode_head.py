"""MFuserHead: shapes, gradient flow, masked attention, score maps, batch independence, size and ONNX export."""

from __future__ import annotations

import math

import pytest
import torch

from mfuser_model.network.decode_head import HeadOutput, MFuserHead, mask_attention_bias, semantic_scores
from mfuser_model.network.position_encoding import sine_position_encoding

TINY = {
    "in_channels": 16,
    "text_dim": 12,
    "num_classes": 5,
    "hidden_dim": 32,
    "num_heads": 2,
    "num_pixel_decoder_layers": 2,
    "num_decoder_layers": 3,
    "decoder_ffn_dim": 64,
    "pixel_decoder_ffn_dim": 64,
}


def _features(batch, channels, grid, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, grid // s, grid // s, generator=g, dtype=dtype) for s in (4, 8, 16, 32)]


def _text(batch, k, dim, seed=1, dtype=torch.float32):
    return torch.randn(batch, k, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _tiny_head(seed=0, **overrides):
    torch.manual_seed(seed)
    return MFuserHead(**{**TINY, **overrides})


def test_tiny_head_returns_one_prediction_per_stage_with_the_contract_shapes():
    head = _tiny_head()
    out = head(_features(2, 16, 64), _text(2, 5, 12))
    assert isinstance(out, HeadOutput)
    assert len(out.class_logits) == len(out.mask_logits) == 3 + 1
    for cls, mask in zip(out.class_logits, out.mask_logits, strict=True):
        assert cls.shape == (2, 5, 6)
        assert mask.shape == (2, 5, 16, 16)
        assert torch.isfinite(cls).all()
        assert torch.isfinite(mask).all()


def test_default_width_head_returns_ten_predictions():
    torch.manual_seed(0)
    head = MFuserHead(in_channels=32, text_dim=24, num_classes=19)
    out = head(_features(1, 32, 32), _text(1, 19, 24))
    assert len(out.class_logits) == len(out.mask_logits) == 10
    assert all(c.shape == (1, 19, 20) for c in out.class_logits)
    assert all(m.shape == (1, 19, 8, 8) for m in out.mask_logits)
    assert all(torch.isfinite(m).all() for m in out.mask_logits)


def test_gradients_reach_every_parameter():
    head = _tiny_head().train()
    out = head(_features(2, 16, 64), _text(2, 5, 12))
    g = torch.Generator().manual_seed(3)
    loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in out.class_logits + out.mask_logits)
    loss.backward()
    # every parameter is used: none legitimately lacks a gradient
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_parameters_follow_dtype_and_forward_runs_in_float64():
    head = _tiny_head(dtype=torch.float64)
    assert {p.dtype for p in head.parameters()} == {torch.float64}
    out = head(_features(1, 16, 64, dtype=torch.float64), _text(1, 5, 12, dtype=torch.float64))
    assert out.mask_logits[-1].dtype == torch.float64


def test_sample_alone_equals_sample_in_batch():
    head = _tiny_head().eval()
    feats, text = _features(3, 16, 64), _text(3, 5, 12)
    with torch.no_grad():
        batched = head(feats, text)
        alone = head([f[:1] for f in feats], text[:1])
    for a, b in zip(alone.class_logits + alone.mask_logits, batched.class_logits + batched.mask_logits, strict=True):
        torch.testing.assert_close(a, b[:1], rtol=1e-4, atol=1e-5)


def test_rejects_text_count_different_from_num_classes():
    head = _tiny_head()
    with pytest.raises(ValueError, match="5 text embeddings"):
        head(_features(1, 16, 64), _text(1, 4, 12))


def test_semantic_scores_equal_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)  # K = 3 classes + no-object, 4 queries
    mask = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    scores = semantic_scores(cls, mask)
    expected = torch.zeros(2, 3, 3, 5, dtype=torch.float64)
    for b in range(2):
        for q in range(4):
            e = [math.exp(v) for v in cls[b, q].tolist()]
            for c in range(3):
                expected[b, c] += e[c] / sum(e) / (1 + torch.exp(-mask[b, q]))
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-12)


def test_mask_attention_blocks_background_and_frees_fully_blocked_rows():
    logits = torch.tensor([[[[2.0, -1.0], [-3.0, 0.5]], [[-1.0, -2.0], [-0.5, -4.0]]]])  # (1, 2, 2, 2)
    bias = mask_attention_bias(logits, (2, 2))
    assert bias.shape == (1, 1, 2, 4)
    inf = float("-inf")
    assert bias[0, 0, 0].tolist() == [0.0, inf, inf, 0.0]
    # query 1 is background everywhere: it attends everywhere instead of nowhere
    assert bias[0, 0, 1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_mask_attention_resizes_bilinearly():
    logits = torch.randn(1, 3, 8, 8)
    bias = mask_attention_bias(logits, (4, 4))
    resized = torch.nn.functional.interpolate(logits, (4, 4), mode="bilinear", align_corners=False).flatten(2)
    blocked = bias[:, 0] == float("-inf")
    rows_free = (resized < 0).all(-1, keepdim=True)
    torch.testing.assert_close(blocked, (resized < 0) & ~rows_free)


def test_sine_positions_match_the_masked_cumsum_formula():
    """mmdet's SinePositionalEncoding on an all-valid mask (cumsum of ones), written out."""
    h, w, f = 3, 5, 8
    ones = torch.ones(1, h, w)
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(f) // 2) / f)
    px = x[..., None] / dim_t
    py = y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).view(1, h, w, -1)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).view(1, h, w, -1)
    expected = torch.cat((py, px), dim=3).permute(0, 3, 1, 2)
    torch.testing.assert_close(sine_position_encoding(h, w, num_feats=f), expected)


def test_reference_size_head_has_about_26_77_million_parameters():
    """The spec's hand count for MFuser's head (CLIP/EVA text dim 768, 2048-channel features, 19 classes)."""
    head = MFuserHead(in_channels=2048, text_dim=768, num_classes=19)
    total = sum(p.numel() for p in head.parameters())
    print(f"MFuserHead(in_channels=2048, text_dim=768, num_classes=19): {total:,} parameters")
    # by component, from the reference config (d = 256, FFN 2048, MHA = 4d² + 4d, LN = 2d)
    d, mha, ffn, ln = 256, 4 * 256**2 + 4 * 256, 2 * 256 * 2048 + 2048 + 256, 512
    msda = (d * 192 + 192) + (d * 96 + 96) + 2 * (d * d + d)
    pixel_decoder = (
        3 * (2048 * d + d + 2 * d)  # input 1x1 conv (bias) + GN
        + 3 * d  # level encoding
        + 6 * (msda + mha + ffn + 3 * ln)  # encoder layers
        + ln  # encoder post-norm
        + (2048 * d + 2 * d)  # lateral 1x1 conv (no bias) + GN
        + (9 * d * d + 2 * d)  # output 3x3 conv (no bias) + GN
        + (d * d + d)  # mask feature conv
        + (768 * d + d)  # text projection
        + 19 * d  # text positions
    )
    decoder = (
        9 * (2 * mha + ffn + 3 * ln)
        + ln  # post-norm before every prediction
        + 19 * d  # query positions
        + (768 * d + d) + (d * d + d)  # text -> query MLP
        + 3 * d  # level embed
        + (d * 20 + 20)  # cls_embed
        + 3 * (d * d + d)  # mask_embed
    )
    assert total == pixel_decoder + decoder
    assert abs(total - 26.77e6) / 26.77e6 < 0.02


def test_head_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    head = _tiny_head().eval()
    feats, text = _features(1, 16, 64), _text(1, 5, 12)

    class Final(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, f0, f1, f2, f3, text):
            out = self.head([f0, f1, f2, f3], text)
            return semantic_scores(out.class_logits[-1], out.mask_logits[-1])

    path = tmp_path / "head.onnx"
    torch.onnx.export(Final(head), (*feats, text), str(path), opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (got,) = session.run(None, {n: t.numpy() for n, t in zip(names, (*feats, text), strict=True)})
    with torch.no_grad():
        expected = Final(head)(*feats, text)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)
