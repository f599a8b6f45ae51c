"""The bare-DDS transport: ROS 2 wire format (bytes equal rosbags' CDR) and the node in its own process.

Network traffic stays on loopback: CYCLONEDDS_URI pins Cyclone to ``lo`` without multicast, with 127.0.0.1 as the
only peer, and every run uses its own domain id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("cyclonedds", reason="cyclonedds is part of the [ros] extra")
from cyclonedds.internal import InvalidSample

from mfuser_model.classes import CITYSCAPES_CLASSES
from mfuser_ros.node.conversions import image_to_rgb
from mfuser_ros.node.dds import (
    CameraInfo_,
    CompressedImage_,
    DiagnosticArray_,
    DiagnosticStatus_,
    Header_,
    Image_,
    KeyValue_,
    LabelInfo_,
    RegionOfInterest_,
    Time_,
    VisionClass_,
    create_reader,
    create_writer,
    dds_qos,
    dds_topic_name,
    loopback_uri,
    ros_participant,
)

REPO = Path(__file__).resolve().parents[2]
VISION_MSGS = {
    "vision_msgs/msg/VisionClass": "uint16 class_id\nstring class_name\n",
    "vision_msgs/msg/LabelInfo": "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n",
}


# ---- wire format ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("height", "width", "encoding"), [(480, 640, "rgb8"), (3, 5, "mono8"), (0, 0, "bgr8")])
def test_image_bytes_on_the_wire_equal_rosbags_cdr(typestore, msgs, height, width, encoding):
    channels = 1 if encoding == "mono8" else 3
    data = np.random.default_rng(0).integers(0, 256, height * width * channels, dtype=np.uint8)
    ros = msgs.Image(header=msgs.header(sec=-3, nanosec=999_999_999, frame_id="cam"), height=height, width=width,
                     encoding=encoding, is_bigendian=0, step=width * channels, data=data)
    dds = Image_(Header_(Time_(-3, 999_999_999), "cam"), height, width, encoding, 0, width * channels, data)
    assert dds.serialize() == bytes(typestore.serialize_cdr(ros, "sensor_msgs/msg/Image"))


def test_image_from_rosbags_cdr_decodes_to_the_same_pixels(typestore, msgs, scene):
    ros = msgs.image(scene(12, 16), "bgr8", header=msgs.header(sec=4, nanosec=5, frame_id="f"))
    dds = Image_.deserialize(bytes(typestore.serialize_cdr(ros, "sensor_msgs/msg/Image")))
    assert (dds.header.stamp.sec, dds.header.stamp.nanosec, dds.header.frame_id) == (4, 5, "f")
    np.testing.assert_array_equal(image_to_rgb(dds), image_to_rgb(ros))


def test_compressed_image_bytes_equal_rosbags_cdr(typestore, msgs, scene):
    ros = msgs.compressed(scene(16, 16), "jpeg")
    dds = CompressedImage_(Header_(Time_(12, 345), "camera_optical"), "jpeg", ros.data)
    assert dds.serialize() == bytes(typestore.serialize_cdr(ros, "sensor_msgs/msg/CompressedImage"))
    assert CompressedImage_.deserialize(dds.serialize()).data == ros.data.tobytes()


def test_camera_info_bytes_equal_rosbags_cdr(typestore, msgs):
    types = typestore.types
    k, p = np.arange(1.0, 10.0), np.arange(1.0, 13.0)
    ros = types["sensor_msgs/msg/CameraInfo"](
        header=msgs.header(), height=480, width=640, distortion_model="rational_polynomial", d=np.linspace(-1, 1, 8),
        k=k, r=np.eye(3).ravel(), p=p, binning_x=2, binning_y=1,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=3, y_offset=4, height=5, width=6, do_rectify=True))
    dds = CameraInfo_(Header_(Time_(12, 345), "camera_optical"), 480, 640, "rational_polynomial",
                      list(np.linspace(-1, 1, 8)), list(k), list(np.eye(3).ravel()), list(p), 2, 1,
                      RegionOfInterest_(3, 4, 5, 6, True))
    raw = bytes(typestore.serialize_cdr(ros, "sensor_msgs/msg/CameraInfo"))
    assert dds.serialize() == raw
    back = CameraInfo_.deserialize(raw)
    assert (back.k, back.p, back.roi.do_rectify) == (list(k), list(p), True)


def test_diagnostics_bytes_equal_rosbags_cdr(typestore, msgs):
    types = typestore.types
    ros = types["diagnostic_msgs/msg/DiagnosticArray"](header=msgs.header(), status=[
        types["diagnostic_msgs/msg/DiagnosticStatus"](level=1, name="n", message="m", hardware_id="h", values=[
            types["diagnostic_msgs/msg/KeyValue"](key="dropped", value="3")])])
    dds = DiagnosticArray_(Header_(Time_(12, 345), "camera_optical"),
                           [DiagnosticStatus_(1, "n", "m", "h", [KeyValue_("dropped", "3")])])
    assert dds.serialize() == bytes(typestore.serialize_cdr(ros, "diagnostic_msgs/msg/DiagnosticArray"))


def test_label_info_bytes_equal_rosbags_cdr(msgs):
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    for name, text in VISION_MSGS.items():
        store.register(get_types_from_msg(text, name))
    vision_class, label_info = store.types["vision_msgs/msg/VisionClass"], store.types["vision_msgs/msg/LabelInfo"]
    ros = label_info(header=msgs.header(), class_map=[vision_class(class_id=i, class_name=n)
                                                      for i, n in enumerate(CITYSCAPES_CLASSES)], threshold=0.5)
    dds = LabelInfo_(Header_(Time_(12, 345), "camera_optical"),
                     [VisionClass_(i, n) for i, n in enumerate(CITYSCAPES_CLASSES)], 0.5)
    assert dds.serialize() == bytes(store.serialize_cdr(ros, "vision_msgs/msg/LabelInfo"))


@pytest.mark.parametrize(("name", "namespace", "expected"), [
    ("camera/image_raw", "/", "rt/camera/image_raw"),
    ("camera/image_raw", "/robot", "rt/robot/camera/image_raw"),
    ("/diagnostics", "/robot", "rt/diagnostics"),
    ("~/debug", "/robot", "rt/robot/mfuser_node/debug"),
])
def test_ros_names_map_to_dds_topics(name, namespace, expected):
    assert dds_topic_name(name, namespace) == expected


# ---- the node in another process, over loopback ----------------------------------------------------------------

def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` s pass (every wait in these tests is bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


class Camera:
    """The test side: camera publishers and readers of the node's outputs, on the node's domain."""

    def __init__(self, domain_id: int) -> None:
        # Endpoints as a ROS 2 node makes them (type hash in USER_DATA), so rclpy nodes take it as one of theirs.
        self.domain_id = domain_id
        self.dp = ros_participant(domain_id)

        def writer(name, cls):
            return create_writer(self.dp, dds_topic_name(name), cls, dds_qos("sensor_data", 1))

        def reader(name, cls, depth=200, transient_local=False):
            return create_reader(self.dp, dds_topic_name(name), cls, dds_qos("reliable", depth, transient_local))

        self.front = writer("front/image_raw", Image_)
        self.rear = writer("rear/image_raw/compressed", CompressedImage_)
        self.front_info = writer("front/camera_info", CameraInfo_)
        self.front_labels = reader("front/mfuser/labels", Image_)
        self.rear_labels = reader("rear/mfuser/labels", Image_)
        self.front_color = reader("front/mfuser/color", Image_)
        self.diagnostics = reader("/diagnostics", DiagnosticArray_, depth=50)
        self.reader = reader

    @staticmethod
    def take(reader, n: int = 100) -> list:
        """The valid samples of one take: a writer that leaves (the node exiting) hands readers an InvalidSample."""
        return [s for s in reader.take(N=n) if not isinstance(s, InvalidSample)]

    def collect(self, reader, until, timeout: float) -> list:
        got = []

        def poll():
            got.extend(self.take(reader))
            return until(got)

        wait_until(poll, timeout)
        return got

    def camera_values(self, camera: str, timeout: float = 10.0) -> dict[str, str]:
        """Key/values of the newest /diagnostics status of ``camera`` published after this call."""
        self.diagnostics.take(N=100)  # discard older arrays
        arrays = self.collect(self.diagnostics, lambda got: len(got) > 0, timeout)
        assert arrays, "no /diagnostics from the node"
        (status,) = [s for s in arrays[-1].status if s.name == f"mfuser_node: {camera} segmentation"]
        return {kv.key: kv.value for kv in status.values}


def rgb_image(stamp: Time_, height: int = 96, width: int = 128, frame_id: str = "front_optical") -> Image_:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 2, y * 2, (x + y)], -1).astype(np.uint8)
    return Image_(Header_(stamp, frame_id), height, width, "rgb8", 0, width * 3, pixels)


@pytest.fixture(scope="module")
def node_process():
    """The node (``mfuser-node --transport dds``) in its own process, on a loopback-only, per-run domain."""
    domain_id = 1 + os.getpid() % 200
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CYCLONEDDS_URI", loopback_uri())
        env = dict(os.environ)
        cmd = [sys.executable, "-m", "mfuser_ros.node.cli", "--transport", "dds", "--loopback", "--domain-id",
               str(domain_id), "--config", str(REPO / "config" / "mfuser_node.yaml"),
               "-p", "image_topics=[front/image_raw, rear/image_raw/compressed]", "-p", "warmup=false",
               "-p", "diagnostics_period_s=0.3", "-p", "stats_window_s=60.0", "-p", "log_throttle_s=60.0",
               "--duration", "600"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()  # the node prints its ready line once its topics exist
            if "ready" not in line:
                proc.kill()
                pytest.fail(f"node did not start: {line!r} {proc.stderr.read()[-2000:]}")
            camera = Camera(domain_id)
            assert wait_until(lambda: camera.front.get_publication_matched_status().current_count > 0
                              and camera.rear.get_publication_matched_status().current_count > 0, 20.0), \
                "the node's subscriptions were not discovered over loopback"
            # Discovery can be one-sided for a moment (our writer sees the reader first); one answered frame
            # proves the whole path works before the tests measure anything.
            hello = Time_(1, 1)
            replies = send_until_reply(camera.front, lambda: rgb_image(hello), camera.front_labels,
                                       lambda r: r.header.stamp == hello)
            assert any(r.header.stamp == hello for r in replies), "the node never answered over loopback"
            yield proc, camera
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            # SIGTERM is a shutdown request: exit 0, and no traceback from the listener thread either.
            assert (proc.returncode, "Traceback" in err) == (0, False), err[-3000:]


def send_until_reply(writer, make_msg, reader, match, attempts: int = 20, period: float = 0.5) -> list:
    """Publish (best effort) until a reply matching ``match`` arrives; at most ``attempts`` sends."""
    replies = []
    for _ in range(attempts):
        writer.write(make_msg())
        end = time.monotonic() + period
        while time.monotonic() < end:
            replies.extend(Camera.take(reader, 50))
            if any(match(r) for r in replies):
                return replies
            time.sleep(0.02)
    return replies


@pytest.mark.slow
def test_labels_come_back_with_the_input_header(node_process):
    proc, camera = node_process
    stamp = Time_(1234, 5678)
    replies = send_until_reply(camera.front, lambda: rgb_image(stamp), camera.front_labels,
                               lambda r: r.header.stamp == stamp)
    (labels,) = [r for r in replies if r.header.stamp == stamp][:1]
    assert labels.header.frame_id == "front_optical"
    assert (labels.encoding, labels.height, labels.width, labels.step) == ("mono8", 96, 128, 128)
    assert max(labels.data) < len(CITYSCAPES_CLASSES)
    # The colour image is published because this test subscribes to it.
    colors = camera.collect(camera.front_color, lambda got: any(c.header.stamp == stamp for c in got), 10.0)
    color = next(c for c in colors if c.header.stamp == stamp)
    assert (color.encoding, color.height, color.width) == ("bgr8", 96, 128)
    assert proc.poll() is None


@pytest.mark.slow
def test_compressed_camera_and_latched_label_info(node_process):
    _, camera = node_process
    stamp = Time_(77, 1)
    y, x = np.mgrid[0:64, 0:80]
    bgr = np.stack([x * 3, y * 3, x + y], -1).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", bgr)[1].reshape(-1)
    replies = send_until_reply(camera.rear, lambda: CompressedImage_(Header_(stamp, "rear_optical"), "jpeg", jpeg),
                               camera.rear_labels, lambda r: r.header.stamp == stamp)
    labels = next(r for r in replies if r.header.stamp == stamp)
    assert (labels.header.frame_id, labels.height, labels.width) == ("rear_optical", 64, 80)
    # A reader that joins late still gets the class names (transient local).
    late = camera.reader("rear/mfuser/label_info", LabelInfo_, depth=1, transient_local=True)
    infos = camera.collect(late, lambda got: len(got) > 0, 10.0)
    assert [c.class_name for c in infos[0].class_map] == list(CITYSCAPES_CLASSES)


@pytest.mark.slow
def test_frames_faster_than_the_model_are_dropped_not_queued(node_process):
    _, camera = node_process
    before = camera.camera_values("front")
    sent = 60
    for i in range(sent):  # ~300 Hz; the tiny model on 2 CPU cores needs several times longer per frame
        camera.front.write(rgb_image(Time_(5000, i)))
        time.sleep(0.003)
    outputs = camera.collect(camera.front_labels,
                             lambda got: any(o.header.stamp == Time_(5000, sent - 1) for o in got), 30.0)
    outputs = [o for o in outputs if o.header.stamp.sec == 5000]
    stamps = [o.header.stamp.nanosec for o in outputs]
    assert stamps, "no output for the burst"
    assert stamps == sorted(stamps), "outputs must come in input order"
    assert len(stamps) < sent // 2, f"{len(stamps)} of {sent} frames processed: frames were queued, not dropped"
    assert stamps[-1] == sent - 1, "the newest frame must be the one processed last"
    after = camera.camera_values("front")
    assert int(after["dropped"]) - int(before["dropped"]) >= sent - len(stamps) - 2  # a few may be lost in transit


@pytest.mark.slow
def test_malformed_messages_are_counted_and_the_node_keeps_running(node_process):
    proc, camera = node_process
    before = camera.camera_values("front")
    good = rgb_image(Time_(9000, 0))
    bad = [
        Image_(good.header, 96, 128, "rgb8", 0, 100, good.data),  # step smaller than a row
        Image_(good.header, 96, 128, "rgb8", 0, 384, good.data.tobytes()[:1000]),  # truncated
        Image_(good.header, 96, 128, "bayer_rggb8", 0, 128, good.data),  # unknown encoding
        Image_(good.header, 0, 0, "rgb8", 0, 0, b""),  # zero size
        Image_(good.header, 100_000, 100_000, "rgb8", 0, 300_000, good.data),  # far larger than the limits
        Image_(good.header, 96, 127, "yuyv", 0, 254, good.data),  # odd width for 4:2:2
    ]
    for msg in bad:
        camera.front.write(msg)
        time.sleep(0.3)  # slower than a decode failure, so every bad frame reaches the decoder
    rear_bad = CompressedImage_(Header_(Time_(9000, 1), "rear_optical"), "jpeg", b"\xff\xd8\xff\xe0garbage")
    camera.rear.write(rear_bad)
    stamp = Time_(9001, 0)
    replies = send_until_reply(camera.front, lambda: rgb_image(stamp), camera.front_labels,
                               lambda r: r.header.stamp == stamp)
    assert any(r.header.stamp == stamp for r in replies), "the node stopped answering after malformed frames"
    assert proc.poll() is None
    after = camera.camera_values("front")
    errors = int(after["errors"]) - int(before["errors"])
    dropped = int(after["dropped"]) - int(before["dropped"])
    assert (errors, dropped) == (len(bad), 0), "each bad frame reaches the decoder and is counted as an error"
    rear = camera.camera_values("rear")
    assert int(rear["errors"]) >= 1


@pytest.mark.slow
def test_camera_info_and_compressed_labels_come_back_with_the_labels_header(node_process):
    _, camera = node_process
    stamp = Time_(4321, 8)
    info_out = camera.reader("front/mfuser/camera_info", CameraInfo_)
    png_out = camera.reader("front/mfuser/labels/compressed", CompressedImage_)
    k = [90.0, 0.0, 64.5, 0.0, 91.0, 48.0, 0.0, 0.0, 1.0]
    info = CameraInfo_(Header_(stamp, "front_optical"), 96, 128, "plumb_bob", [0.0] * 5, k,
                       [1.0, 0, 0, 0, 1, 0, 0, 0, 1], [*k[:3], 0.0, *k[3:6], 0.0, *k[6:], 0.0])

    def send():  # the camera driver's pair: CameraInfo and image with one stamp
        camera.front_info.write(info)
        return rgb_image(stamp)

    labels = send_until_reply(camera.front, send, camera.front_labels, lambda r: r.header.stamp == stamp)
    raw = next(r for r in labels if r.header.stamp == stamp)
    infos = camera.collect(info_out, lambda got: any(i.header.stamp == stamp for i in got), 10.0)
    paired = next(i for i in infos if i.header.stamp == stamp)
    assert (paired.header.frame_id, paired.height, paired.width, paired.k) == ("front_optical", 96, 128, k)
    pngs = camera.collect(png_out, lambda got: any(c.header.stamp == stamp for c in got), 10.0)
    png = next(c for c in pngs if c.header.stamp == stamp)
    assert png.format == "mono8; png compressed "
    decoded = cv2.imdecode(np.frombuffer(png.data, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, np.frombuffer(raw.data, np.uint8).reshape(96, 128))
    values = camera.camera_values("front")
    assert int(values["camera_info_paired"]) >= 1


def test_optional_outputs_are_wanted_only_while_a_reader_is_matched(monkeypatch):
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    from mfuser_ros.node.config import NodeConfig
    from mfuser_ros.node.dds import _DdsSink
    from mfuser_ros.node.pipeline import Wanted

    monkeypatch.setenv("CYCLONEDDS_URI", loopback_uri())
    dp = DomainParticipant(1 + (os.getpid() + 100) % 200)
    sink = _DdsSink(dp, NodeConfig(image_topics=("front/image_raw",)), "/", "mfuser_node")
    assert sink.wanted(0) == Wanted()
    reader = DataReader(dp, Topic(dp, "rt/front/mfuser/overlay", Image_), qos=dds_qos("reliable", 1))
    assert wait_until(lambda: sink.wanted(0) == Wanted(overlay=True), 10.0), f"{reader} never matched"
    png = DataReader(dp, Topic(dp, "rt/front/mfuser/labels/compressed", CompressedImage_), qos=dds_qos("reliable", 1))
    assert wait_until(lambda: sink.wanted(0) == Wanted(overlay=True, labels_compressed=True), 10.0), f"{png}"


# ---- field robustness (issue 12) ------------------------------------------------------------------------------

def raw_writes(sample, old: bytes, new: bytes):
    """``sample`` whose CDR bytes have ``old`` replaced by ``new``: how a sender with a broken serializer looks."""
    wire = sample.serialize(use_version_2=False)
    assert old in wire
    sample.serialize = lambda use_version_2=False, **_: wire.replace(old, new)
    return sample


def delete_entities(*entities) -> None:
    """Delete cyclonedds entities now (Python keeps them alive in a registry until then): a publisher leaving."""
    for entity in entities:
        entity.__del__()


@pytest.mark.slow
def test_a_publisher_that_leaves_and_comes_back_is_answered_again(node_process):
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.topic import Topic

    proc, camera = node_process
    before = camera.camera_values("front")
    for attempt in range(3):
        dp = DomainParticipant(camera.domain_id)
        writer = DataWriter(dp, Topic(dp, dds_topic_name("front/image_raw"), Image_), qos=dds_qos("sensor_data", 1))
        assert wait_until(lambda w=writer: w.get_publication_matched_status().current_count > 0, 20.0)
        stamp = Time_(7000 + attempt, 0)
        replies = send_until_reply(writer, lambda s=stamp: rgb_image(s), camera.front_labels,
                                   lambda r, s=stamp: r.header.stamp == s)
        assert any(r.header.stamp == stamp for r in replies), f"no answer from the node for publisher {attempt}"
        # The node's reader gets samples without data: the instance disposed, then its last writer gone.
        writer.dispose(rgb_image(stamp))
        delete_entities(writer, dp)
        time.sleep(0.3)
    assert proc.poll() is None
    after = camera.camera_values("front")
    assert after["errors"] == before["errors"], "samples without data are state changes, not bad frames"


@pytest.mark.slow
def test_a_sample_that_cannot_be_deserialized_is_counted_and_the_node_goes_on(node_process):
    proc, camera = node_process
    before = camera.camera_values("front")
    camera.front.write(raw_writes(rgb_image(Time_(9100, 0)), b"rgb8\x00", b"rg\xff8\x00"))  # not UTF-8
    time.sleep(0.3)
    stamp = Time_(9101, 0)
    replies = send_until_reply(camera.front, lambda: rgb_image(stamp), camera.front_labels,
                               lambda r: r.header.stamp == stamp)
    assert any(r.header.stamp == stamp for r in replies)
    assert proc.poll() is None
    after = camera.camera_values("front")
    assert int(after["errors"]) - int(before["errors"]) == 1


def test_one_undecodable_sample_in_a_take_loses_only_itself(monkeypatch):
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    from mfuser_ros.node.dds import take_samples
    from mfuser_ros.node.pipeline import FrameWorker

    monkeypatch.setenv("CYCLONEDDS_URI", loopback_uri())
    dp = DomainParticipant(1 + (os.getpid() + 101) % 200)
    topic = Topic(dp, "rt/front/image_raw", Image_)
    plain_reader, our_reader = (DataReader(dp, topic, qos=dds_qos("reliable", 10)) for _ in range(2))
    writer = DataWriter(dp, topic, qos=dds_qos("reliable", 10))
    for sample in (rgb_image(Time_(1, 0)), raw_writes(rgb_image(Time_(2, 0)), b"rgb8\x00", b"\xc3(gb\x00"),
                   rgb_image(Time_(3, 0))):
        writer.write(sample)
    # cyclonedds itself: one bad string and the whole take raises, its good samples gone with it.
    with pytest.raises(UnicodeDecodeError):
        plain_reader.take(N=16)
    logged = []
    worker = FrameWorker(None, ["front"], sink=None, warn=logged.append)
    assert take_samples(our_reader, lambda sample: worker.submit(0, sample),
                        lambda reason: worker.reject(0, "malformed", reason)) == 2
    snap = worker.stats[0].snapshot()
    assert (snap.frames_in, snap.dropped, snap.errors, snap.last_error) == (3, 1, 1, "malformed")
    ((_, newest),) = worker._slots.take(0.0)
    assert newest.header.stamp == Time_(3, 0)
    assert len(logged) == 1 and "UnicodeDecodeError" in logged[0]


def run_node(args: list[str], timeout: float, script: str = "-m mfuser_ros.node.cli") -> subprocess.Popen:
    """``mfuser-node --transport dds`` (or ``script``) in its own process on loopback; stdout/stderr piped."""
    env = dict(os.environ, CYCLONEDDS_URI=loopback_uri())
    cmd = [sys.executable, *script.split(), "--transport", "dds", "--loopback", "--duration", str(timeout), *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_worker_that_dies_is_fatal_and_visible():
    domain_id = 1 + (os.getpid() + 7) % 200
    proc = run_node(["--domain-id", str(domain_id), "-p", "image_topics=[front/image_raw]", "-p", "warmup=false",
                     "-p", "diagnostics_period_s=0.2", "-p", "allow_random_weights=true"], timeout=60,
                    script=str(REPO / "tests/ros/faulty_node.py"))
    try:
        assert "ready" in proc.stdout.readline()
        camera = Camera(domain_id)
        levels = []
        deadline = time.monotonic() + 30.0
        while proc.poll() is None and time.monotonic() < deadline:
            camera.front.write(rgb_image(Time_(1, 0)))
            levels += [s.level for a in camera.take(camera.diagnostics, 50) for s in a.status]
            time.sleep(0.1)
        levels += [s.level for a in camera.take(camera.diagnostics, 50) for s in a.status]
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, f"exit {proc.returncode}: {err[-2000:]}"
    assert 2 in levels, "an ERROR status must go out before the exit"
    assert "worker stopped: KeyError: 'injected bug'" in err
    assert "terminate called" not in err


@pytest.mark.slow
def test_shutdown_while_a_frame_is_in_the_model_exits_0():
    from cyclonedds.pub import DataWriter
    from cyclonedds.topic import Topic

    domain_id = 1 + (os.getpid() + 9) % 200
    proc = run_node(["--domain-id", str(domain_id), "-p", "image_topics=[front/image_raw/compressed]",
                     "-p", "warmup=false", "-p", "diagnostics_period_s=0.1", "-p", "shutdown_timeout_s=0.3",
                     "-p", "allow_random_weights=true"],
                    timeout=120)
    try:
        assert "ready" in proc.stdout.readline()
        camera = Camera(domain_id)
        front = DataWriter(camera.dp, Topic(camera.dp, dds_topic_name("front/image_raw/compressed"),
                                            CompressedImage_), qos=dds_qos("reliable", 1))
        assert wait_until(lambda: front.get_publication_matched_status().current_count > 0, 20.0)
        # 1024x1024 keeps the tiny model busy for seconds on this CPU: far longer than shutdown_timeout_s.
        big = cv2.imencode(".png", np.full((1024, 1024, 3), 90, np.uint8))[1].reshape(-1)
        front.write(CompressedImage_(Header_(Time_(1, 0), "f"), "png", big))

        def received() -> bool:
            return any(kv.key == "frames_in" and kv.value == "1"
                       for a in camera.take(camera.diagnostics, 50) for s in a.status for kv in s.values)

        assert wait_until(received, 20.0), "the node never received the frame"
        proc.send_signal(signal.SIGINT)  # the frame is in the model now
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, "terminate called" in err) == (0, False), err[-2000:]
    assert "did not finish within shutdown_timeout_s" in err
    assert "in 1, out 0" in out, "the statistics are printed before leaving"
