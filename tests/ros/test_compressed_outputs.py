"""Compressed outputs (image_transport's ``<kind>/compressed``) and the colour legend.

PNG labels are read back with Pillow as well as OpenCV (a reader that shares no code with the encoder), and the
``format`` strings are parsed the way image_transport's compressed subscriber parses them.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from mfuser_model.classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, palette_from_hex, palette_to_hex
from mfuser_model.errors import ConfigError
from mfuser_ros.node.config import NodeConfig
from mfuser_ros.node.conversions import (
    JPEG_BGR8_FORMAT,
    PNG_MONO8_FORMAT,
    encode_jpeg_bgr8,
    encode_png_mono8,
    labels_to_color_bgr,
    palette_lut_bgr,
)
from mfuser_ros.node.model_loader import model_legend
from mfuser_ros.node.pipeline import SegmentationPipeline, Wanted


def subscriber_view(fmt: str) -> tuple[str, str]:
    """(image encoding, compressed part) as compressed_image_transport's subscriber splits ``format`` at ';'."""
    encoding, _, rest = fmt.partition(";")
    return encoding, rest


def test_format_strings_are_image_transports():
    # compressed_publisher.cpp: format = encoding + "; png compressed " (+ target, none for mono) / "; jpeg ..."
    assert PNG_MONO8_FORMAT == "mono8; png compressed "
    assert JPEG_BGR8_FORMAT == "bgr8; jpeg compressed bgr8"
    assert subscriber_view(PNG_MONO8_FORMAT) == ("mono8", " png compressed ")
    encoding, rest = subscriber_view(JPEG_BGR8_FORMAT)
    assert encoding == "bgr8" and "compressed bgr8" in rest  # no colour conversion needed on decode


@pytest.mark.parametrize("level", [0, 3, 9])
def test_png_labels_round_trip_exactly(level):
    rng = np.random.default_rng(level)
    labels = rng.integers(0, 19, size=(37, 53), dtype=np.uint8)
    labels[5:9, :] = 255  # ignore
    png = encode_png_mono8(labels, level)
    assert png.format == PNG_MONO8_FORMAT and png.data.dtype == np.uint8 and png.data.ndim == 1
    np.testing.assert_array_equal(cv2.imdecode(png.data, cv2.IMREAD_UNCHANGED), labels)
    with PILImage.open(io.BytesIO(png.data.tobytes())) as decoded:
        assert decoded.mode == "L"
        np.testing.assert_array_equal(np.asarray(decoded), labels)


def test_jpeg_quality_trades_size_for_fidelity():
    labels = np.zeros((90, 160), np.uint8)
    labels[30:, :] = 0
    labels[:30, :] = 10
    labels[40:70, 50:90] = 13
    color = labels_to_color_bgr(labels, palette_lut_bgr(CITYSCAPES_PALETTE))
    sizes, errors = [], []
    for quality in (50, 95):
        jpeg = encode_jpeg_bgr8(color, quality)
        decoded = cv2.imdecode(jpeg.data, cv2.IMREAD_COLOR)
        assert jpeg.format == JPEG_BGR8_FORMAT and decoded.shape == color.shape
        sizes.append(jpeg.data.size)
        errors.append(float(np.abs(decoded.astype(int) - color).mean()))
    assert sizes[0] < sizes[1] and errors[0] > errors[1]
    assert errors[1] < 2.0


def test_compressed_outputs_are_computed_only_when_wanted(tiny_model, msgs, scene):
    pipeline = SegmentationPipeline(tiny_model.pipeline.segmenter, jpeg_quality=95)
    message = msgs.image(scene(48, 64), "rgb8")
    assert pipeline.process(message).compressed == {}
    only = pipeline.process(message, Wanted(labels_compressed=True, overlay_compressed=True))
    assert set(only.compressed) == {"labels", "overlay"}
    assert only.color is None and only.overlay is None  # the raw images are not built for nobody
    np.testing.assert_array_equal(cv2.imdecode(only.compressed["labels"].data, cv2.IMREAD_UNCHANGED),
                                  only.labels.data)
    full = pipeline.process(message, Wanted(color=True, overlay=True, color_compressed=True,
                                            overlay_compressed=True))
    for kind in ("color", "overlay"):
        decoded = cv2.imdecode(full.compressed[kind].data, cv2.IMREAD_COLOR)
        raw = getattr(full, kind).data
        assert decoded.shape == raw.shape
        psnr = 10 * np.log10(255**2 / max(np.mean((decoded.astype(float) - raw) ** 2), 1e-9))
        assert psnr > 30, f"{kind}: JPEG at quality 95 only {psnr:.1f} dB"
    assert full.input_size == (48, 64)


def test_palette_hex_round_trip_and_errors():
    hexes = palette_to_hex(CITYSCAPES_PALETTE)
    assert hexes[0] == "#804080" and palette_from_hex(hexes) == CITYSCAPES_PALETTE
    with pytest.raises(ValueError, match="'#12345G'"):
        palette_from_hex(["#12345G"])
    with pytest.raises(ConfigError, match="color_palette"):
        NodeConfig(color_palette=("red",))


def test_the_legend_is_the_models_palette_unless_the_parameter_sets_one():
    legend = model_legend(NodeConfig(preset="tiny-eva02"))
    assert legend.class_names == CITYSCAPES_CLASSES and legend.palette == CITYSCAPES_PALETTE
    custom = ("#000000", "#FFFFFF", *palette_to_hex(CITYSCAPES_PALETTE)[2:])
    assert model_legend(NodeConfig(preset="tiny-eva02", color_palette=custom)).palette[:2] == ((0, 0, 0),
                                                                                               (255, 255, 255))
    with pytest.raises(ConfigError, match="'color_palette': 2 colours for the model's 19 classes"):
        model_legend(NodeConfig(preset="tiny-eva02", color_palette=("#000000", "#FFFFFF")))
