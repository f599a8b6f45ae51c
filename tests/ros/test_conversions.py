"""Image message decoding agrees exactly with rosbags-image, honours step, and rejects malformed messages."""

from __future__ import annotations

import array
import io

import cv2
import numpy as np
import pytest

from mfuser_model.classes import CITYSCAPES_PALETTE, colorize
from mfuser_ros.errors import FrameError
from mfuser_ros.node.conversions import (
    SUPPORTED_ENCODINGS,
    ImageLimits,
    compressed_to_rgb,
    confidence_to_mono8,
    image_to_rgb,
    labels_to_color_bgr,
    message_to_rgb,
    overlay_bgr,
    palette_lut_bgr,
)

rosbags_image = pytest.importorskip("rosbags.image", reason="rosbags-image is part of the [ros] extra")

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "yuv422": 2, "uyvy": 2, "yuyv": 2,
            "yuv422_yuy2": 2}


def raw_pixels(encoding: str, height: int = 6, width: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width) if CHANNELS[encoding] == 1 else (height, width, CHANNELS[encoding])
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def test_every_supported_encoding_is_tested():
    assert set(SUPPORTED_ENCODINGS) == set(CHANNELS)


@pytest.mark.parametrize("encoding", sorted(CHANNELS))
def test_raw_image_matches_rosbags_image_exactly(msgs, encoding):
    msg = msgs.image(raw_pixels(encoding), encoding)
    expected = rosbags_image.message_to_cvimage(msg, "rgb8")
    got = image_to_rgb(msg)
    assert got.shape == (6, 10, 3)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "yuv422", "yuyv"])
def test_padded_rows_decode_like_the_unpadded_image(msgs, encoding):
    pixels = raw_pixels(encoding)
    row = pixels[0].size
    padded = msgs.image(pixels, encoding, step=row + 7)
    unpadded = msgs.image(pixels, encoding)
    np.testing.assert_array_equal(image_to_rgb(padded), rosbags_image.message_to_cvimage(unpadded, "rgb8"))


def test_rgb8_without_padding_is_a_view_of_the_payload(msgs):
    msg = msgs.image(raw_pixels("rgb8"), "rgb8")
    assert np.shares_memory(image_to_rgb(msg), msg.data)


def test_rclpy_style_array_payload_decodes(msgs):
    pixels = raw_pixels("bgr8")
    msg = msgs.image(pixels, "bgr8")
    msg.data = array.array("B", pixels.tobytes())  # rclpy's type for uint8[]
    np.testing.assert_array_equal(image_to_rgb(msg), pixels[..., ::-1])


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_image_matches_rosbags_image_exactly(msgs, scene, fmt):
    msg = msgs.compressed(scene(40, 56), fmt)
    expected = rosbags_image.message_to_cvimage(msg, "rgb8")
    np.testing.assert_array_equal(compressed_to_rgb(msg), expected)
    np.testing.assert_array_equal(message_to_rgb(msg), expected)


def test_png_is_lossless_and_grey_png_becomes_three_equal_channels(msgs, scene):
    rgb = scene(20, 30)
    np.testing.assert_array_equal(compressed_to_rgb(msgs.compressed(rgb, "png")), rgb)
    grey = rgb[..., 0].copy()
    _, buf = cv2.imencode(".png", grey)
    msg = msgs.CompressedImage(header=msgs.header(), format="png", data=buf.reshape(-1))
    out = compressed_to_rgb(msg)
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def malformed_images(msgs):
    good = raw_pixels("rgb8")
    data = msgs.image(good, "rgb8").data
    return {
        "unsupported encoding": (msgs.image(good, "rgb8"), {"encoding": "bayer_rggb8"}),
        "is smaller than width": (msgs.image(good, "rgb8"), {"step": 29}),
        "truncated": (msgs.image(good, "rgb8"), {"data": data[:-1]}),
        "zero or negative size": (msgs.image(good, "rgb8"), {"height": 0, "step": 30, "data": data[:0]}),
        "exceeds the limit": (msgs.image(good, "rgb8"), {"width": 100_000, "step": 300_000}),
        "must be even": (msgs.image(raw_pixels("yuyv", width=10), "yuyv"), {"width": 9, "step": 18}),
    }


@pytest.mark.parametrize("case", ["unsupported encoding", "is smaller than width", "truncated",
                                  "zero or negative size", "exceeds the limit", "must be even"])
def test_malformed_raw_images_raise_frame_error_naming_the_problem(msgs, case):
    msg, changes = malformed_images(msgs)[case]
    for name, value in changes.items():
        setattr(msg, name, value)
    with pytest.raises(FrameError, match=case):
        image_to_rgb(msg)


def test_image_larger_than_declared_limits_is_rejected_before_reading_data(msgs):
    msg = msgs.image(raw_pixels("rgb8"), "rgb8")
    with pytest.raises(FrameError, match="exceeds the limit 8x8"):
        image_to_rgb(msg, ImageLimits(max_width=8, max_height=8))


def test_corrupt_and_unknown_compressed_payloads_raise_frame_error(msgs, scene):
    jpeg = msgs.compressed(scene(32, 32), "jpeg")
    header_only = msgs.CompressedImage(header=msgs.header(), format="jpeg", data=jpeg.data[:20])
    with pytest.raises(FrameError, match="JPEG"):
        compressed_to_rgb(header_only)
    garbage = jpeg.data.copy()
    garbage[2:] = np.random.default_rng(1).integers(0, 256, garbage.size - 2, dtype=np.uint8)
    with pytest.raises(FrameError, match="corrupt"):
        compressed_to_rgb(msgs.CompressedImage(header=msgs.header(), format="jpeg", data=garbage))
    with pytest.raises(FrameError, match="neither PNG nor JPEG"):
        compressed_to_rgb(msgs.CompressedImage(header=msgs.header(), format="tiff", data=np.arange(40, dtype=np.uint8)))
    with pytest.raises(FrameError, match="empty"):
        compressed_to_rgb(msgs.CompressedImage(header=msgs.header(), format="jpeg", data=np.zeros(0, np.uint8)))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_image_declaring_a_huge_size_is_rejected_without_decoding(msgs, scene, fmt):
    msg = msgs.compressed(scene(64, 48), fmt)
    with pytest.raises(FrameError, match="48x64 exceeds the limit 32x32"):
        compressed_to_rgb(msg, ImageLimits(max_width=32, max_height=32))


def test_color_lut_is_the_palette_in_bgr():
    labels = np.array([[0, 1, 18], [255, 19, 5]], dtype=np.uint8)
    color = labels_to_color_bgr(labels, palette_lut_bgr(CITYSCAPES_PALETTE))
    np.testing.assert_array_equal(color, colorize(labels)[..., ::-1])


def test_overlay_blends_and_keeps_the_camera_image_on_ignored_pixels():
    rgb = np.full((2, 2, 3), 100, dtype=np.uint8)
    labels = np.array([[0, 255], [0, 0]], dtype=np.uint8)
    color = labels_to_color_bgr(labels, palette_lut_bgr(CITYSCAPES_PALETTE))
    out = overlay_bgr(rgb, color, labels, alpha=0.5)
    np.testing.assert_array_equal(out[0, 1], [100, 100, 100])
    np.testing.assert_array_equal(out[0, 0], np.round((np.array([128, 64, 128]) + 100) / 2))


def test_confidence_is_scaled_to_0_255_and_saturated():
    conf = np.array([[0.0, 0.5, 1.0, 1.2]], dtype=np.float32)
    np.testing.assert_array_equal(confidence_to_mono8(conf), [[0, 128, 255, 255]])


# ---- field robustness (issue 12) ------------------------------------------------------------------------------

def _jpeg_bytes(scene, height: int = 48, width: int = 64) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(scene(height, width, seed=5), cv2.COLOR_RGB2BGR))[1].tobytes()


def _libjpeg_warns(data: bytes, capfd) -> bool:
    """OpenCV's own libjpeg as the oracle: does it print a warning (``Corrupt JPEG data``, ``Premature end``)?"""
    capfd.readouterr()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return decoded is not None and bool(capfd.readouterr().err.strip())


def test_jpegs_that_libjpeg_warns_about_are_malformed(msgs, scene, capfd):
    good = _jpeg_bytes(scene)
    rng = np.random.default_rng(12)
    warned = []
    for _ in range(60):
        flipped = bytearray(good)
        flipped[int(rng.integers(len(good) // 4, len(good) - 2))] ^= 1 << int(rng.integers(8))
        if _libjpeg_warns(bytes(flipped), capfd):
            warned.append(bytes(flipped))
    assert len(warned) >= 10, "the seeded bit flips should give libjpeg warnings"
    for data in warned:
        with pytest.raises(FrameError, match="corrupt JPEG"):
            compressed_to_rgb(msgs.CompressedImage(header=msgs.header(), format="jpeg",
                                                   data=np.frombuffer(data, np.uint8)))
    assert compressed_to_rgb(msgs.CompressedImage(header=msgs.header(), format="jpeg",
                                                  data=np.frombuffer(good, np.uint8))).shape == (48, 64, 3)


@pytest.mark.parametrize("case", ["taller header", "cut short"])
def test_jpeg_whose_header_lies_about_its_data_is_malformed(msgs, scene, capfd, case):
    data = bytearray(_jpeg_bytes(scene))
    if case == "taller header":
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 7] = (96).to_bytes(2, "big")  # says 96 rows, holds 48
    else:
        data = data[: len(data) * 2 // 3] + b"\xff\xd9"
    assert _libjpeg_warns(bytes(data), capfd)
    with pytest.raises(FrameError, match="corrupt JPEG"):
        compressed_to_rgb(msgs.CompressedImage(header=msgs.header(), format="jpeg",
                                               data=np.frombuffer(bytes(data), np.uint8)))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_is_applied_as_opencv_does(msgs, orientation):
    from PIL import Image as PILImage

    rgb = np.zeros((24, 40, 3), np.uint8)
    rgb[:8, :16] = (255, 0, 0)
    rgb[16:, 30:] = (0, 0, 255)
    image = PILImage.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    data = np.frombuffer(buffer.getvalue(), np.uint8)
    expected = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)
    np.testing.assert_array_equal(compressed_to_rgb(msgs.CompressedImage(header=msgs.header(), format="jpeg",
                                                                         data=data)), expected)


def test_a_long_encoding_string_is_cut_in_the_error(msgs):
    msg = msgs.image(raw_pixels("rgb8"), "rgb8")
    msg.encoding = "x" * 10_000
    with pytest.raises(FrameError, match="10000 characters") as err:
        image_to_rgb(msg)
    assert len(str(err.value)) < 400


@pytest.mark.parametrize("message", [object(), None, "rgb8", {"encoding": "rgb8"}])
def test_anything_that_is_not_an_image_message_is_a_frame_error(message):
    with pytest.raises(FrameError):
        message_to_rgb(message)
