"""The pure-PyTorch multi-scale deformable attention against an explicit bilinear-sampling loop."""

from __future__ import annotations

import math

import pytest
import torch

from mfuser_model.ops.ms_deform_attn import MSDeformAttn, ms_deform_attn

SHAPES = [(3, 4), (2, 2), (1, 3)]


def _naive(value, spatial_shapes, locations, weights):
    """Loop over every sample: bilinear read with align_corners=False and zeros outside the map."""
    B, _, M, D = value.shape
    _, Lq, _, _, P, _ = locations.shape
    starts = [0]
    for h, w in spatial_shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(B, Lq, M, D, dtype=value.dtype)
    for b in range(B):
        for q in range(Lq):
            for m in range(M):
                for lvl, (h, w) in enumerate(spatial_shapes):
                    for p in range(P):
                        # normalised (x, y) -> pixel coordinates where pixel j's centre is j
                        px = locations[b, q, m, lvl, p, 0].item() * w - 0.5
                        py = locations[b, q, m, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(px), math.floor(py)
                        sample = torch.zeros(D, dtype=value.dtype)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                wgt = (1 - abs(px - xx)) * (1 - abs(py - yy))
                                sample += wgt * value[b, starts[lvl] + yy * w + xx, m]
                        out[b, q, m] += weights[b, q, m, lvl, p] * sample
    return out.reshape(B, Lq, M * D)


def _inputs(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    B, Lq, M, D, P = 2, 5, 2, 3, 2
    S = sum(h * w for h, w in SHAPES)
    value = torch.randn(B, S, M, D, generator=g, dtype=dtype)
    # some locations fall outside [0, 1] to exercise the zero padding
    locations = torch.rand(B, Lq, M, len(SHAPES), P, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(B, Lq, M, len(SHAPES), P, generator=g, dtype=dtype)
    weights = weights / weights.sum(dim=(-2, -1), keepdim=True)
    return value, locations, weights


def test_matches_naive_bilinear_loop():
    value, locations, weights = _inputs()
    assert ((locations < 0) | (locations > 1)).any()
    out = ms_deform_attn(value, SHAPES, locations, weights)
    expected = _naive(value, SHAPES, locations, weights)
    assert out.shape == (2, 5, 6)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_gradients_match_finite_differences():
    value, locations, weights = _inputs(seed=1)
    inputs = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn(v, SHAPES, loc, w), inputs)


def test_rejects_spatial_shapes_that_do_not_fit_value():
    value, locations, weights = _inputs()
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value, [(3, 4), (2, 2), (1, 2)], locations, weights)


def test_layer_with_zero_offsets_reads_its_own_pixel():
    """At a pixel centre with no offset, bilinear sampling returns that pixel: the layer is a per-pixel linear map."""
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dim=8, num_heads=2, num_levels=1, num_points=3).double()
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()
    h, w = 3, 5
    x = torch.randn(2, h * w, 8, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    ref = torch.stack(((xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h), -1)[None, :, None]
    out = attn(x, ref, x, [(h, w)])
    torch.testing.assert_close(out, attn.output_proj(attn.value_proj(x)), rtol=0, atol=1e-12)


def test_init_spreads_offsets_over_directions():
    attn = MSDeformAttn(embed_dim=16, num_heads=4, num_levels=2, num_points=3)
    assert not attn.sampling_offsets.weight.any()
    assert not attn.attention_weights.weight.any()
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 points along +x; point k at distance k+1; same on every level
    torch.testing.assert_close(bias[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    torch.testing.assert_close(bias[:, 0], bias[:, 1])
    # head 1 (90°) points along +y
    torch.testing.assert_close(bias[1, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
