"""Property-based fuzzing of what a sender controls: message fields and payloads, and the raw bytes of DDS samples.

Properties: message conversion returns a bounded RGB image or raises FrameError, nothing else; the DDS sample path
never raises, loses no well-formed neighbour, and accounts for every sample (delivered or rejected, invalid samples
skipped). Bounded for CI: derandomized, a fixed number of examples, small images.
"""

from __future__ import annotations

import contextlib
import os
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfuser_ros.errors import FrameError
from mfuser_ros.node.camera_info import camera_info_from_message
from mfuser_ros.node.conversions import SUPPORTED_ENCODINGS, ImageLimits, message_to_rgb
from mfuser_ros.node.pipeline import SegmentationPipeline

LIMITS = ImageLimits(max_width=64, max_height=64)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_DDS = settings(FUZZ, max_examples=60)


def _scene(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 7 % 256, y * 5 % 256, (x + y) * 3 % 256], -1).astype(np.uint8)


JPEG = cv2.imencode(".jpg", _scene(24, 32))[1].tobytes()
PNG = cv2.imencode(".png", _scene(24, 32))[1].tobytes()


def _header(sec: object = 1, nanosec: object = 2) -> SimpleNamespace:
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id="cam")


def _check_decoded(msg: object) -> None:
    """The property every decoder input must have."""
    try:
        rgb = message_to_rgb(msg, LIMITS)
    except FrameError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert 0 < rgb.shape[0] <= 64 and 0 < rgb.shape[1] <= 64


@st.composite
def edited(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped or replaced, maybe cut short or extended."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        # Half the edits hit the first bytes, where the lengths and strings of a CDR sample live.
        pos = draw(st.integers(0, min(len(out), 64) - 1) | st.integers(0, len(out) - 1))
        out[pos] = draw(st.integers(0, 255)) if draw(st.booleans()) else out[pos] ^ (1 << draw(st.integers(0, 7)))
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    if draw(st.integers(0, 5)) == 0:
        out += draw(st.binary(max_size=64))
    return bytes(out)


raw_images = st.builds(
    SimpleNamespace,
    header=st.just(_header()),
    height=st.integers(-2, 70) | st.sampled_from([2**31, 2**32 - 1]),
    width=st.integers(-2, 70) | st.sampled_from([2**31, 2**32 - 1]),
    encoding=st.sampled_from(SUPPORTED_ENCODINGS) | st.text(max_size=40),
    is_bigendian=st.integers(0, 1),
    step=st.integers(-1, 300) | st.just(2**32 - 1),
    data=st.binary(max_size=4000) | st.integers(0, 255).map(lambda v: bytes([v]) * 70 * 70 * 4),
)
compressed_images = st.builds(
    SimpleNamespace, header=st.just(_header()), format=st.sampled_from(["jpeg", "png", "", "rgb8; jpeg compressed"]),
    data=edited(JPEG) | edited(PNG) | st.binary(max_size=200))
odd_objects = st.one_of(
    st.none(), st.integers(), st.text(max_size=10), st.builds(SimpleNamespace, format=st.integers()),
    st.builds(SimpleNamespace, encoding=st.just("rgb8"), height=st.text(max_size=3), width=st.just(1),
              step=st.just(3), data=st.just(b"abc")),
    st.builds(SimpleNamespace, format=st.just("png"), data=st.lists(st.integers(-300, 300), max_size=30)))


@FUZZ
@given(raw_images | compressed_images | odd_objects)
def test_conversion_returns_a_bounded_image_or_raises_frame_error(msg):
    _check_decoded(msg)


@FUZZ
@given(msg=raw_images | compressed_images,
       header=st.none() | st.builds(_header, st.integers(-2**40, 2**40) | st.text(max_size=5), st.integers()))
def test_the_pipeline_decode_accepts_nothing_without_a_usable_header(msg, header):
    msg.header = header
    pipeline = SegmentationPipeline(segmenter=None, limits=LIMITS)
    try:
        rgb = pipeline.decode(msg)
    except FrameError:
        return
    assert rgb.shape[2] == 3 and int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec) is not None


# ---- the DDS sample path ----------------------------------------------------------------------------------

dds = pytest.importorskip("mfuser_ros.node.dds", reason="cyclonedds is part of the [ros] extra")
from cyclonedds.core import DDSException  # noqa: E402 - only with cyclonedds


@pytest.fixture(scope="module")
def dds_topics():
    """An in-process writer/reader pair per message type, keep-last 8, on a loopback-only private domain."""
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CYCLONEDDS_URI", dds.loopback_uri())
        dp = DomainParticipant(1 + (os.getpid() + 33) % 200)
        pairs = {}
        for cls in (dds.Image_, dds.CompressedImage_, dds.CameraInfo_):
            topic = Topic(dp, f"rt/fuzz/{cls.__name__}", cls)
            pairs[cls] = (DataWriter(dp, topic, qos=dds.dds_qos("reliable", 8)),
                          DataReader(dp, topic, qos=dds.dds_qos("reliable", 8)))
        yield pairs


def _valid(cls: type) -> object:
    header = dds.Header_(dds.Time_(3, 4), "fuzz_optical")
    if cls is dds.Image_:
        rgb = _scene(6, 8)
        return dds.Image_(header, 6, 8, "rgb8", 0, 24, rgb)
    if cls is dds.CompressedImage_:
        return dds.CompressedImage_(header, "jpeg", np.frombuffer(JPEG, np.uint8))
    return dds.CameraInfo_(header, 6, 8, "plumb_bob", [0.1] * 5, [1.0] * 9, [1.0] * 9, [1.0] * 12)


def _raw(cls: type, wire: bytes) -> object:
    sample = _valid(cls)
    sample.serialize = lambda use_version_2=False, **_: wire
    return sample


@FUZZ_DDS
@given(cls=st.sampled_from(["Image_", "CompressedImage_", "CameraInfo_"]), data=st.data(),
       dispose=st.booleans())
def test_the_dds_sample_path_survives_any_bytes_and_keeps_the_neighbours(dds_topics, cls, data, dispose):
    cls = getattr(dds, cls)
    writer, reader = dds_topics[cls]
    reader.take(N=64)  # nothing left from the previous example
    good = _valid(cls)
    wire = good.serialize(use_version_2=False)
    # The 4-byte encapsulation header stays: Cyclone itself drops samples whose header it cannot read.
    fuzzed = wire[:4] + data.draw(edited(wire[4:] or b"\0"), label="payload")
    writer.write(good)
    sent = 2
    try:
        writer.write(_raw(cls, fuzzed))
        sent += 1
    except DDSException:  # Cyclone's writer refuses some payloads itself (e.g. an empty one): nothing is sent
        pass
    writer.write(good)
    if dispose:
        writer.dispose(good)  # an invalid sample (instance disposed, no data) follows
    delivered, rejected = [], []
    deadline = time.monotonic() + 5.0
    while len(delivered) + len(rejected) < sent and time.monotonic() < deadline:
        dds.take_samples(reader, delivered.append, rejected.append, warn=rejected.append)
    assert len(delivered) + len(rejected) == sent, (delivered, rejected)
    assert len(delivered) >= 2, "the well-formed neighbours are kept"
    assert all("cannot deserialize" in reason for reason in rejected)
    for msg in delivered:
        if cls is dds.CameraInfo_:
            with contextlib.suppress(FrameError):
                camera_info_from_message(msg)
        else:
            _check_decoded(msg)
