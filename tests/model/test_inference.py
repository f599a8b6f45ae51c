"""Labels from low-resolution scores: the fast border-only path equals upsample-then-argmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mfuser_model.checkpoint import build_model
from mfuser_model.inference import Segmenter, labels_from_lowres
from mfuser_model.preprocess import normalize


def _smooth_scores(k: int, h: int, w: int, seed: int) -> torch.Tensor:
    # Region-like scores: random fields blurred so arg-max forms blobs with borders, like real predictions.
    gen = torch.Generator().manual_seed(seed)
    field = torch.rand(1, k, h // 4 + 1, w // 4 + 1, generator=gen)
    return F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False).clamp_min(0)[0]


@pytest.mark.parametrize(("image", "padded", "seed"), [((120, 200), (128, 224), 0), ((64, 64), (64, 64), 1),
                                                      ((97, 131), (112, 140), 2)])
def test_fast_labels_equal_upsample_then_argmax(image, padded, seed):
    low = _smooth_scores(19, padded[0] // 4, padded[1] // 4, seed)
    full = F.interpolate(low[None], size=padded, mode="bilinear", align_corners=False)[0, :, : image[0], : image[1]]
    best, expected = full.max(dim=0)
    result = labels_from_lowres(low, image, padded, image)
    assert result.labels.shape == image
    assert result.labels.dtype == np.uint8
    agree = (result.labels == expected.numpy()).mean()
    assert agree == 1.0
    np.testing.assert_allclose(result.confidence, (best / full.sum(dim=0)).numpy(), rtol=0, atol=2e-6)


def test_border_pixels_in_small_groups_give_the_same_result(monkeypatch):
    # Noise scores: nearly every output pixel is a border pixel, the case the grouping bounds in memory.
    low = torch.rand(19, 24, 40, generator=torch.Generator().manual_seed(4))
    whole = labels_from_lowres(low, (96, 160), (96, 160), (200, 300))
    monkeypatch.setattr("mfuser_model.inference._BORDER_PIXELS_PER_PASS", 97)
    grouped = labels_from_lowres(low, (96, 160), (96, 160), (200, 300))
    reference = F.interpolate(low[None], size=(200, 300), mode="bilinear", align_corners=False)[0]
    np.testing.assert_array_equal(grouped.labels, whole.labels)
    np.testing.assert_array_equal(grouped.confidence, whole.confidence)
    assert (grouped.labels == reference.argmax(0).numpy()).mean() > 0.999


def test_fast_labels_resample_to_another_output_size():
    low = _smooth_scores(7, 40, 60, 3)
    out = labels_from_lowres(low, (160, 240), (160, 240), (80, 120))
    # Half-size output samples the same low-res map at the centres of 2x2 input pixels.
    reference = F.interpolate(low[None], size=(80, 120), mode="bilinear", align_corners=False)[0].argmax(0)
    assert out.labels.shape == (80, 120)
    assert (out.labels == reference.numpy()).mean() > 0.99
    skipped = labels_from_lowres(low, (160, 240), (160, 240), (80, 120), with_confidence=False)
    np.testing.assert_array_equal(skipped.labels, out.labels)
    assert skipped.confidence.size == 0


def test_whole_mode_segmenter_matches_the_full_resolution_path():
    torch.manual_seed(0)
    seg = Segmenter(build_model("tiny-eva02"))
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    scores = seg.scores(normalize(image))[0]
    best, labels = scores.max(dim=0)
    result = seg.segment(image)
    assert (result.labels == labels.numpy()).mean() > 0.9999
    np.testing.assert_allclose(result.confidence, (best / scores.sum(dim=0)).numpy(), atol=1e-5)


@pytest.mark.parametrize(("size", "box", "enlarge", "expected"), [
    ((1080, 1920), (2048, 1024), False, (1024, 1820)),  # the paper's box: long edge <= 2048, short <= 1024
    ((4096, 4096), (2048, 1024), False, (1024, 1024)),
    ((1920, 1080), (2048, 1024), False, (1820, 1024)),  # a portrait camera: the box turns with it
    ((480, 640), (2048, 1024), False, (480, 640)),  # smaller images are not enlarged by default...
    ((480, 640), (2048, 1024), True, (1024, 1365)),  # ...unless asked (the paper's protocol)
    ((720, 1280), (1280, 720), False, (720, 1280)),
])
def test_network_size_fits_the_box_keeping_the_aspect_ratio(size, box, enlarge, expected):
    seg = Segmenter(build_model("tiny-eva02"), input_box=box, enlarge=enlarge)
    assert seg.network_size(*size) == expected


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_big_images_run_at_the_network_size_and_labels_come_back_at_theirs(mode):
    torch.manual_seed(0)
    model = build_model("tiny-eva02")
    seen = []
    for name in ("predict", "predict_lowres"):
        real = getattr(model, name)
        setattr(model, name, lambda x, real=real: seen.append(tuple(x.shape[-2:])) or real(x))
    bounded = Segmenter(model, mode=mode, crop_size=112, stride=84, input_box=(112, 84))
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    result = bounded.segment(image)
    assert result.labels.shape == (300, 400)
    assert max(h for h, _ in seen) <= 112 and max(w for _, w in seen) <= 112, seen
    # Exactly: resize to the network size (bilinear), segment that, labels resampled to the image's size.
    import cv2

    plain = Segmenter(model, mode=mode, crop_size=112, stride=84)
    small = cv2.resize(image, (112, 84), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(result.labels, plain.segment(small, output_size=(300, 400)).labels)
    assert bounded.segment(image, output_size=(30, 40)).labels.shape == (30, 40)
