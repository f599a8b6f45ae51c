"""The inference protocol a report states: mode, window, network input size and the windows per image."""

from __future__ import annotations

import pytest
import torch

from mfuser_model.checkpoint import build_model
from mfuser_model.inference import InferenceProtocol, Segmenter, slide_scores


@pytest.mark.parametrize(("size", "expected"), [
    ((1024, 2048), 18),  # Cityscapes after the paper's resize: 3 x 6 windows of 512 every 341
    ((720, 1280), 8),  # BDD100K at 1280x720: 2 x 4
    ((512, 512), 1),
    ((300, 400), 1),  # smaller than the crop: the image itself is the one window
    ((1024, 1365), 12),  # a 4:3 Mapillary image fitted into 2048x1024
])
def test_window_count_equals_the_windows_slide_inference_runs(size, expected):
    calls = []

    def score_fn(window: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(window.shape[-2:]))
        return window.new_zeros((window.shape[0], 2, *window.shape[-2:]))

    slide_scores(score_fn, torch.zeros(1, 3, *size), 512, 341, 2)
    protocol = InferenceProtocol("slide", 512, 341, None, enlarge=False)
    assert protocol.windows(*size) == len(calls) == expected


def test_segmenter_states_its_protocol_and_the_network_input_per_image_size():
    model = build_model("tiny-clip")
    slide = Segmenter(model, mode="slide", crop_size=64, stride=43, input_box=(256, 128), enlarge=True)
    assert slide.protocol == InferenceProtocol("slide", 64, 43, (256, 128), enlarge=True)
    record = slide.protocol.record({(60, 120): 3, (480, 640): 1})
    assert record["mode"] == "slide" and record["crop_size"] == 64 and record["stride"] == 43
    assert record["input_box"] == [256, 128] and record["enlarge"] is True
    # 60x120 is enlarged to 128x256 (rows 3, columns 6); 480x640 shrinks to 128x171 (rows 3, columns 4).
    assert record["inputs"] == [{"input": [60, 120], "network": [128, 256], "windows": 18, "images": 3},
                                {"input": [480, 640], "network": [128, 171], "windows": 12, "images": 1}]
    assert slide.protocol.describe({(60, 120): 3}) == "slide 64/43; network input 128x256 (h x w): 18 windows, 3 images"
    whole = Segmenter(model)
    assert whole.protocol == InferenceProtocol("whole", None, None, None, enlarge=False)
    assert whole.protocol.describe({(60, 120): 1}) == "whole image; network input 60x120 (h x w): 1 window, 1 image"
    assert whole.protocol.describe() == "whole image; network input own size"


def _mmseg_slide_inference(encode_decode, img: torch.Tensor, crop: int, stride: int, num_classes: int):
    """mmseg 0.16 ``EncoderDecoder.slide_inference`` (as MFuser's segmentors copy it), written out independently:
    windows clipped to the image and decoded unpadded, logits F.pad-ded into place, divided by the count."""
    import torch.nn.functional as F

    batch_size, _, h_img, w_img = img.size()
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = img.new_zeros((batch_size, num_classes, h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            crop_seg_logit = encode_decode(img[:, :, y1:y2, x1:x2])
            preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


@pytest.mark.parametrize(("preset", "size"), [
    ("tiny-clip", (80, 112)),  # smaller than the crop both ways: one window, the image itself
    ("tiny-clip", (80, 200)),  # short side below the crop: 1 x 3 windows of 80 x 128
    ("tiny-eva02", (100, 150)),  # patch 14, sizes that are no multiple of it
])
def test_slide_windows_smaller_than_the_crop_are_decoded_unpadded_as_the_reference(preset, size):
    torch.manual_seed(0)
    model = build_model(preset).eval()
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    seg = Segmenter(model, mode="slide", crop_size=128, stride=85)
    with torch.no_grad():
        expected = _mmseg_slide_inference(model.predict, images, 128, 85, model.config.num_classes)
    torch.testing.assert_close(seg.scores(images), expected, rtol=0, atol=1e-6)
    if size == (80, 112):
        with torch.no_grad():
            torch.testing.assert_close(seg.scores(images), model.predict(images), rtol=0, atol=0)
