"""Image message <-> numpy conversions, shared by rclpy, bare DDS and rosbag replay.

Messages are duck-typed: anything with the fields of sensor_msgs/Image (``height, width, encoding, is_bigendian,
step, data``) or sensor_msgs/CompressedImage (``format, data``) works, so rosbags typestore classes, rclpy messages
and this package's DDS types all go through the same code. ``data`` may be bytes, a numpy uint8 array or
``array.array('B')`` (rclpy).

Decoding returns RGB, as the model wants, and gives exactly the pixels of rosbags-image's
``message_to_cvimage(msg, "rgb8")`` (same OpenCV colour conversions). Unlike rosbags-image it honours ``step``
(padded rows) and checks every declared size before touching the payload, so malformed messages raise
:class:`FrameError` instead of producing garbage. JPEGs are decoded by libjpeg-turbo through simplejpeg in strict
mode: a stream libjpeg would only *warn* about (corrupt entropy data, a header claiming rows the data does not hold)
is a malformed frame, not a picture with grey blocks. The EXIF orientation is applied as OpenCV applies it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import simplejpeg

from mfuser_ros.errors import FrameError, clip

__all__ = [
    "JPEG_BGR8_FORMAT",
    "PNG_MONO8_FORMAT",
    "SUPPORTED_ENCODINGS",
    "CompressedOutput",
    "ImageLimits",
    "OutputImage",
    "check_message",
    "compressed_size",
    "compressed_to_rgb",
    "confidence_to_mono8",
    "encode_jpeg_bgr8",
    "encode_png_mono8",
    "image_to_rgb",
    "labels_to_color_bgr",
    "message_to_rgb",
    "overlay_bgr",
    "palette_lut_bgr",
    "stamp_ns",
]

# encoding -> (channels, OpenCV conversion to RGB or None). yuv422 is UYVY in ROS (and in rosbags-image);
# yuv422_yuy2 is YUYV. Bytes per pixel equals channels for every entry (YUV 4:2:2 packs 2 bytes per pixel).
_ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
    "yuv422": (2, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": (2, cv2.COLOR_YUV2RGB_UYVY),
    "yuyv": (2, cv2.COLOR_YUV2RGB_YUYV),
    "yuv422_yuy2": (2, cv2.COLOR_YUV2RGB_YUYV),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)
_YUV = {"yuv422", "uyvy", "yuyv", "yuv422_yuy2"}


@dataclass(frozen=True)
class ImageLimits:
    """Largest image accepted; bigger ones (declared or decoded) are malformed, not a reason to allocate."""

    max_width: int = 4096
    max_height: int = 4096


@dataclass(frozen=True)
class OutputImage:
    """A ready-to-publish image: ``data`` is C-contiguous (H, W) or (H, W, C) uint8, rows unpadded."""

    encoding: str
    data: np.ndarray

    @property
    def height(self) -> int:
        """Rows."""
        return int(self.data.shape[0])

    @property
    def width(self) -> int:
        """Columns."""
        return int(self.data.shape[1])

    @property
    def step(self) -> int:
        """Bytes per row."""
        return int(self.data.strides[0])


# sensor_msgs/CompressedImage ``format`` strings exactly as image_transport's compressed plugin writes them
# (compressed_image_transport/src/compressed_publisher.cpp: "<encoding>; <codec> compressed <target>"; a mono
# image has no target, hence the trailing space), so its subscriber, rqt and Foxglove decode them as theirs.
PNG_MONO8_FORMAT = "mono8; png compressed "
JPEG_BGR8_FORMAT = "bgr8; jpeg compressed bgr8"


@dataclass(frozen=True)
class CompressedOutput:
    """A ready-to-publish sensor_msgs/CompressedImage payload: ``format`` string and encoded bytes."""

    format: str
    data: np.ndarray  # 1-D uint8, the PNG or JPEG file


def encode_png_mono8(labels: np.ndarray, level: int = 3) -> CompressedOutput:
    """(H, W) uint8 class ids -> lossless PNG (decodes to exactly ``labels`` with IMREAD_UNCHANGED)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(labels, dtype=np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays, which the pipeline never builds
        msg = f"PNG encoding failed for a {labels.shape} label image"
        raise FrameError(msg)
    return CompressedOutput(PNG_MONO8_FORMAT, buf.reshape(-1))


def encode_jpeg_bgr8(image_bgr: np.ndarray, quality: int = 90) -> CompressedOutput:
    """(H, W, 3) uint8 BGR -> JPEG at ``quality`` (1-100)."""
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        msg = f"JPEG encoding failed for a {image_bgr.shape} image"
        raise FrameError(msg)
    return CompressedOutput(JPEG_BGR8_FORMAT, buf.reshape(-1))


def stamp_ns(header: Any) -> int:
    """``header.stamp`` as integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _payload(data: Any) -> np.ndarray:
    """Zero-copy uint8 view of a message's data field (bytes, ndarray, array.array, memoryview)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        # Sequences without the buffer protocol (e.g. a list of ints from a generic deserializer).
        return np.asarray(data, dtype=np.uint8)


def _check_size(width: int, height: int, limits: ImageLimits, what: str) -> None:
    if width <= 0 or height <= 0:
        msg = f"{what}: zero or negative size {width}x{height}"
        raise FrameError(msg)
    if width > limits.max_width or height > limits.max_height:
        msg = f"{what}: {width}x{height} exceeds the limit {limits.max_width}x{limits.max_height}"
        raise FrameError(msg)


def image_to_rgb(msg: Any, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode a sensor_msgs/Image to (H, W, 3) uint8 RGB.

    rgb8 without row padding comes back as a read-only view of the message payload (no copy).

    Raises:
        FrameError: unknown encoding, zero or oversized image, step smaller than a row, truncated data,
            odd width for YUV 4:2:2.
    """
    layout = _raw_layout(msg, limits)
    rows = layout.data[: layout.step * layout.height].reshape(layout.height, layout.step)[:, : layout.row]
    pixels = rows if layout.channels == 1 else rows.reshape(layout.height, layout.width, layout.channels)
    if layout.conversion is None:
        return pixels
    return cv2.cvtColor(pixels, layout.conversion)


@dataclass(frozen=True)
class _RawLayout:
    """A sensor_msgs/Image whose declared sizes were all checked against each other and its payload."""

    encoding: str
    channels: int
    conversion: int | None
    height: int
    width: int
    step: int
    row: int
    data: np.ndarray


def _raw_layout(msg: Any, limits: ImageLimits) -> _RawLayout:
    encoding = str(msg.encoding)
    if encoding not in _ENCODINGS:
        msg_ = f"unsupported encoding '{clip(encoding)}'; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        raise FrameError(msg_)
    channels, conversion = _ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(width, height, limits, f"image ({encoding})")
    if encoding in _YUV and width % 2:
        msg_ = f"image ({encoding}): width {width} must be even for YUV 4:2:2"
        raise FrameError(msg_)
    row = width * channels
    if step < row:
        msg_ = f"image ({encoding}): step {step} is smaller than width*channels = {row}"
        raise FrameError(msg_)
    data = _payload(msg.data)
    need = step * height
    if data.size < need:
        msg_ = f"image ({encoding}): data has {data.size} bytes, step*height needs {need} (truncated)"
        raise FrameError(msg_)
    return _RawLayout(encoding, channels, conversion, height, width, step, row, data)


def compressed_size(data: np.ndarray) -> tuple[str, int, int]:
    """Read (kind, width, height) from a PNG or JPEG header without decoding the pixels.

    Raises:
        FrameError: the payload is neither PNG nor JPEG, or its header is cut short.
    """
    raw = data.tobytes() if data.size < 24 else data[:24].tobytes()
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(raw) < 24 or raw[12:16] != b"IHDR":
            msg = "compressed image: PNG header is truncated"
            raise FrameError(msg)
        width, height = struct.unpack(">II", raw[16:24])
        return "png", width, height
    if raw.startswith(b"\xff\xd8"):
        return ("jpeg", *_jpeg_header(data)[:2])
    msg = f"compressed image: payload starts with {raw[:4].hex()}, neither PNG nor JPEG"
    raise FrameError(msg)


# Start-of-frame markers that carry the image size (all SOFn except DHT C4, JPG C8, DAC CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_header(data: np.ndarray) -> tuple[int, int, int]:
    """(width, height, EXIF orientation 1..8) from the markers before the first frame header."""
    buf = memoryview(data)
    pos, end = 2, len(buf)
    orientation = 1
    while pos + 4 <= end:
        if buf[pos] != 0xFF:
            msg = f"compressed image: corrupt JPEG (no marker at byte {pos})"
            raise FrameError(msg)
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = (buf[pos + 2] << 8) | buf[pos + 3]
        if marker in _SOF:
            if pos + 9 > end:
                break
            height = (buf[pos + 5] << 8) | buf[pos + 6]
            width = (buf[pos + 7] << 8) | buf[pos + 8]
            return width, height, orientation
        if length < 2:
            msg = f"compressed image: corrupt JPEG (segment length {length} at byte {pos})"
            raise FrameError(msg)
        if marker == 0xE1 and orientation == 1:
            orientation = _exif_orientation(bytes(buf[pos + 4:min(pos + 2 + length, end)]))
        pos += 2 + length
    msg = "compressed image: corrupt or truncated JPEG (no frame header)"
    raise FrameError(msg)


def _exif_orientation(app1: bytes) -> int:
    """The Orientation tag (0x0112) of an APP1 Exif payload's first IFD; 1 when absent or unreadable (as OpenCV)."""
    if not app1.startswith(b"Exif\0\0") or len(app1) < 14:
        return 1
    tiff = app1[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind, _, value = struct.unpack(order + "HHIH", tiff[entry:entry + 10])
        if tag == 0x0112 and kind == 3:  # SHORT
            return value if 1 <= value <= 8 else 1
    return 1


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation 2..8 the way OpenCV's imdecode applies it (transpose, then a flip)."""
    if orientation >= 5:
        rgb = cv2.transpose(rgb)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return rgb if flip is None else cv2.flip(rgb, flip)


def _decode_jpeg(data: np.ndarray, orientation: int) -> np.ndarray:
    try:
        # strict: libjpeg's recoverable errors (its warnings) raise too; the pixels equal OpenCV's decode (same
        # libjpeg-turbo defaults: accurate integer DCT, fancy upsampling).
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as err:
        msg = f"compressed image: corrupt JPEG ({clip(str(err))})"
        raise FrameError(msg) from None
    return _apply_orientation(rgb, orientation) if orientation != 1 else rgb


def _decode_png(data: np.ndarray) -> np.ndarray:
    try:
        # IMREAD_COLOR_RGB decodes straight to RGB: the same pixels as decode-to-BGR then BGR2RGB (rosbags-image),
        # without the extra pass; grey images are expanded to three equal channels.
        rgb = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)
    except cv2.error as err:
        msg = f"compressed image (png): decoder failed: {clip(str(err))}"
        raise FrameError(msg) from None
    if rgb is None:
        msg = "compressed image (png): corrupt data, the decoder returned nothing"
        raise FrameError(msg)
    return rgb


def _compressed_layout(msg: Any, limits: ImageLimits) -> tuple[np.ndarray, str, int, int]:
    """(payload, kind, width, height) of a CompressedImage whose header was read and checked against ``limits``."""
    data = _payload(msg.data)
    if data.size == 0:
        msg_ = "compressed image: empty data"
        raise FrameError(msg_)
    kind, width, height = compressed_size(data)
    _check_size(width, height, limits, f"compressed image ({kind})")
    return data, kind, width, height


def compressed_to_rgb(msg: Any, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG, any ``format`` string) to (H, W, 3) uint8 RGB.

    The header is checked against ``limits`` before decoding, so a small file declaring a huge image is
    rejected without allocating it.

    Raises:
        FrameError: empty, not PNG/JPEG, oversized, or corrupt payload.
    """
    data, kind, width, height = _compressed_layout(msg, limits)
    rgb = _decode_jpeg(data, _jpeg_header(data)[2]) if kind == "jpeg" else _decode_png(data)
    # An EXIF orientation (applied as OpenCV and rosbags-image apply it) may swap the two sides.
    if rgb.shape[:2] not in ((height, width), (width, height)):
        msg_ = f"compressed image ({kind}): header says {width}x{height}, decoded {rgb.shape[1]}x{rgb.shape[0]}"
        raise FrameError(msg_)
    return rgb


def message_to_rgb(msg: Any, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode an Image or CompressedImage (told apart by the ``format`` field, as rosbags-image does).

    Raises:
        FrameError: for anything that does not decode, including objects that are not image messages at all (a
            transport's invalid sample, a field of the wrong type): every failure is this one frame's.
    """
    return _untrusted(msg, lambda: compressed_to_rgb(msg, limits) if hasattr(msg, "format")
                      else image_to_rgb(msg, limits))


def check_message(msg: Any, limits: ImageLimits = ImageLimits()) -> None:
    """Every check :func:`message_to_rgb` makes before touching pixels: the declared sizes against the limits and
    the payload (raw), the PNG/JPEG header (compressed). Cheap (no decoding), so a transport can refuse a message
    that is malformed on its face before it takes a camera's latest-frame slot from a good one.

    Raises:
        FrameError: the message cannot decode.
    """
    _untrusted(msg, lambda: _compressed_layout(msg, limits) if hasattr(msg, "format") else _raw_layout(msg, limits))


def _untrusted(msg: Any, work: Callable[[], Any]) -> Any:
    try:
        return work()
    except FrameError:
        raise
    except Exception as err:  # untrusted input: whatever breaks, it is this message's fault
        msg_ = f"not a decodable image message ({type(msg).__name__}): {type(err).__name__}: {clip(str(err))}"
        raise FrameError(msg_) from err


def palette_lut_bgr(palette: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """(1, 256, 3) uint8 BGR lookup table for cv2.LUT; ids past the palette (and 255 = ignore) are black."""
    lut = np.zeros((1, 256, 3), dtype=np.uint8)
    lut[0, : len(palette)] = np.asarray(palette, dtype=np.uint8)[:, ::-1]
    return lut


def labels_to_color_bgr(labels: np.ndarray, lut_bgr: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class ids -> (H, W, 3) uint8 BGR palette image."""
    # cv2.LUT on a 3-channel copy of the ids is several times faster than numpy fancy indexing at 1080p.
    return cv2.LUT(cv2.cvtColor(labels, cv2.COLOR_GRAY2BGR), lut_bgr)


def overlay_bgr(rgb: np.ndarray, color_bgr: np.ndarray, labels: np.ndarray, alpha: float,
                ignore_index: int = 255) -> np.ndarray:
    """Blend the colour mask over the camera image (BGR); ignored pixels keep the camera image.

    Args:
        rgb: (h, w, 3) camera image, resized to the label size when it differs.
        color_bgr: (H, W, 3) palette image. labels: (H, W) class ids. alpha: weight of the mask.
    """
    height, width = labels.shape
    if rgb.shape[:2] != (height, width):
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    image_bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    out = cv2.addWeighted(color_bgr, alpha, image_bgr, 1.0 - alpha, 0.0)
    ignored = labels == ignore_index
    if ignored.any():
        out[ignored] = image_bgr[ignored]
    return out


def confidence_to_mono8(confidence: np.ndarray) -> np.ndarray:
    """(H, W) float32 max probability in [0, 1] -> (H, W) uint8, rounded and saturated (255 = certain)."""
    return cv2.convertScaleAbs(confidence, alpha=255.0)
