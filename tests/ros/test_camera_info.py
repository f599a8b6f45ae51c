"""CameraInfo beside the labels: image_proc's resize scaling checked against ray-cast scenes, and stamp pairing.

The scenes are fronto-parallel rectangles at known depths, rendered per pixel through a CameraInfo with
image_geometry's model (full-resolution K, then ROI offset and binning): the label image at the output size must be
the one the *scaled* CameraInfo renders, and a known 3D point must land on the same label at both sizes.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import cv2
import numpy as np
import pytest

from mfuser_ros.errors import FrameError
from mfuser_ros.node.camera_info import (
    CameraInfoData,
    CameraInfoPairer,
    RegionOfInterestData,
    camera_info_from_message,
    scale_camera_info,
)
from mfuser_ros.node.config import NodeConfig, camera_info_topic
from mfuser_ros.node.pipeline import FrameWorker, SegmentationPipeline, Wanted
from mfuser_ros.node.stats import DiagnosticThresholds

# (class id, X0, X1, Y0, Y1, Z) in metres, camera frame (x right, y down, z forward); later rows are nearer.
BOXES = [(2, -3.0, 3.0, -2.0, 0.5, 20.0), (13, -1.6, 0.2, -0.4, 0.9, 9.0), (11, 0.6, 1.1, -1.2, 0.8, 6.0),
         (5, -2.2, -1.9, -2.5, 1.0, 7.5)]
BACKGROUND = 10
FULL_H, FULL_W = 480, 640
K = (500.0, 0.0, 320.5, 0.0, 510.0, 239.0, 0.0, 0.0, 1.0)
P = (500.0, 0.0, 320.5, -60.0, 0.0, 510.0, 239.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # right camera of a 0.12 m stereo pair


def plain_info(**kw) -> CameraInfoData:
    return CameraInfoData(header=None, height=FULL_H, width=FULL_W, distortion_model="plumb_bob",
                          d=(0.0,) * 5, k=K, r=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), p=P, **kw)


def image_size(info: CameraInfoData) -> tuple[int, int]:
    """Size of the image a camera with this CameraInfo sends (ROI, then binning)."""
    height = info.roi.height or info.height
    width = info.roi.width or info.width
    return height // max(1, info.binning_y), width // max(1, info.binning_x)


def render(info: CameraInfoData, height: int, width: int) -> np.ndarray:
    """Label of the nearest rectangle hit by the ray through every pixel centre (image_geometry's pixel model)."""
    bx, by = max(1, info.binning_x), max(1, info.binning_y)
    fx, cx, fy, cy = info.k[0], info.k[2], info.k[4], info.k[5]
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    xn = (info.roi.x_offset + bx * u - cx) / fx
    yn = (info.roi.y_offset + by * v - cy) / fy
    labels = np.full((height, width), BACKGROUND, np.uint8)
    depth = np.full((height, width), np.inf)
    for class_id, x0, x1, y0, y1, z in BOXES:
        hit = (xn * z >= x0) & (xn * z <= x1) & (yn * z >= y0) & (yn * z <= y1) & (z < depth)
        labels[hit], depth[hit] = class_id, z
    return labels


def project(info: CameraInfoData, point: np.ndarray) -> tuple[int, int]:
    """(row, col) of the pixel a 3D point lands on (K, then ROI and binning)."""
    x, y, z = point
    u_full, v_full = info.k[0] * x / z + info.k[2], info.k[4] * y / z + info.k[5]
    u = (u_full - info.roi.x_offset) / max(1, info.binning_x)
    v = (v_full - info.roi.y_offset) / max(1, info.binning_y)
    return round(v), round(u)


def box_points() -> list[tuple[int, np.ndarray]]:
    """A few visible points on each rectangle (away from its edges and from nearer rectangles)."""
    points = []
    for class_id, x0, x1, y0, y1, z in BOXES:
        for fx_, fy_ in ((0.5, 0.5), (0.3, 0.7), (0.7, 0.25)):
            points.append((class_id, np.array([x0 + fx_ * (x1 - x0), y0 + fy_ * (y1 - y0), z])))
    return points


def visible(info: CameraInfoData, labels: np.ndarray, class_id: int, point: np.ndarray) -> bool:
    """The point's pixel and its neighbours (2 px around) all show its rectangle."""
    row, col = project(info, point)
    if not (2 <= row < labels.shape[0] - 2 and 2 <= col < labels.shape[1] - 2):
        return False
    return bool((labels[row - 2:row + 3, col - 2:col + 3] == class_id).all())


@pytest.mark.parametrize(("name", "info", "out_size"), [
    ("half", plain_info(), (240, 320)),
    ("aspect change", plain_info(), (300, 500)),
    ("upscale", plain_info(), (720, 960)),
    ("binned 2x2 with ROI", plain_info(binning_x=2, binning_y=2,
                                       roi=RegionOfInterestData(64, 48, 384, 512, False)), (150, 200)),
])
def test_a_known_point_lands_on_the_same_label_at_both_sizes(name, info, out_size):
    in_size = image_size(info)
    labels_in = render(info, *in_size)
    scaled = scale_camera_info(info, in_size, out_size, header="hdr")
    # What the node publishes at the output size: the input's labels resampled (nearest) to that size.
    labels_out = cv2.resize(labels_in, out_size[::-1], interpolation=cv2.INTER_NEAREST)
    assert image_size(scaled) == out_size
    checked = 0
    for class_id, point in box_points():
        if not visible(info, labels_in, class_id, point):
            continue
        row, col = project(scaled, point)
        assert labels_out[row, col] == class_id, f"{name}: point {point} of class {class_id} moved"
        checked += 1
    assert checked >= 6
    # The scaled CameraInfo renders the output labels themselves (up to image_proc's cx * s convention, which
    # puts pixel centres up to (1 - s) / 2 px off the resize's: only boundary pixels may differ).
    agreement = float(np.mean(render(scaled, *out_size) == labels_out))
    assert agreement > 0.97, f"{name}: only {agreement:.3f} of the pixels agree"


def test_scaling_follows_image_proc_resize():
    info = plain_info(roi=RegionOfInterestData(10, 21, 301, 401, True))
    out = scale_camera_info(info, (480, 640), (360, 480), header="labels header")
    sx, sy = 480 / 640, 360 / 480
    assert (out.header, out.height, out.width) == ("labels header", 360, 480)
    np.testing.assert_allclose(out.k, [500 * sx, 0, 320.5 * sx, 0, 510 * sy, 239 * sy, 0, 0, 1])
    np.testing.assert_allclose(out.p, [500 * sx, 0, 320.5 * sx, -60 * sx, 0, 510 * sy, 239 * sy, 0, 0, 0, 1, 0])
    # ROI truncated like image_proc's static_cast<int>; D, R, binning and do_rectify unchanged.
    assert out.roi == RegionOfInterestData(7, 15, 225, 300, True)
    assert (out.d, out.r, out.binning_x, out.binning_y) == (info.d, info.r, 0, 0)
    # Rectified projection with P (Tx included) scales exactly: u' = sx * u, v' = sy * v.
    point = np.array([0.4, -0.3, 5.0, 1.0])
    uvw = np.reshape(info.p, (3, 4)) @ point
    uvw_out = np.reshape(out.p, (3, 4)) @ point
    np.testing.assert_allclose(uvw_out[:2] / uvw_out[2], [sx * uvw[0] / uvw[2], sy * uvw[1] / uvw[2]])
    assert scale_camera_info(info, (480, 640), (480, 640), header="h") == replace(info, header="h")


@pytest.mark.parametrize(("image", "expected"), [
    ("front/image_raw", "front/camera_info"), ("front/image_raw/compressed", "front/camera_info"),
    ("image_raw", "camera_info"), ("/robot/cam/image_rect", "/robot/cam/camera_info"), ("~/image", "~/camera_info"),
])
def test_camera_info_topic_is_the_image_topics_sibling(image, expected):
    assert camera_info_topic(image) == expected
    assert NodeConfig(image_topics=(image,)).camera_info_topic_names() == [expected]


def test_camera_info_from_ros2_and_ros1_messages(typestore):
    types = typestore.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="c")
    ros2 = types["sensor_msgs/msg/CameraInfo"](
        header=header, height=FULL_H, width=FULL_W, distortion_model="plumb_bob", d=np.zeros(5), k=np.array(K),
        r=np.eye(3).ravel(), p=np.array(P), binning_x=0, binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    info = camera_info_from_message(ros2)
    assert (info.k, info.p, info.width) == (K, P, FULL_W)

    class Ros1:  # rosbags' ROS 1 CameraInfo names its matrices D, K, R, P
        pass

    ros1 = Ros1()
    for name in ("header", "height", "width", "distortion_model", "binning_x", "binning_y", "roi"):
        setattr(ros1, name, getattr(ros2, name))
    ros1.D, ros1.K, ros1.R, ros1.P = ros2.d, ros2.k, ros2.r, ros2.p
    assert camera_info_from_message(ros1) == info
    with pytest.raises(FrameError, match="'k' has 8 values"):
        camera_info_from_message(replace_field(ros2, k=np.zeros(8)))
    with pytest.raises(FrameError, match="non-finite"):
        camera_info_from_message(replace_field(ros2, p=np.full(12, np.nan)))


def replace_field(msg, **kw):
    return type(msg)(**{**{f: getattr(msg, f) for f in msg.__dataclass_fields__}, **kw})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pairing_by_stamp_in_either_order_and_timeout(msgs, typestore):
    clock = Clock()
    pairer = CameraInfoPairer(2, timeout_s=1.0, keep=4, clock=clock)
    info_msg = lambda sec: to_message(typestore, msgs.header(sec=sec))  # noqa: E731
    # A camera without any CameraInfo: frames wait, expire, and are not counted as unmatched.
    assert pairer.add_frame(1, msgs.header(sec=1), (480, 640), (240, 320)) == []
    clock.now = 5.0
    pairer.expire()
    assert pairer.values(1)["camera_info_unmatched"] == "0"
    # CameraInfo first, then the frame.
    assert pairer.add_info(0, info_msg(10)) == []
    header = msgs.header(sec=10)
    (paired,) = pairer.add_frame(0, header, (480, 640), (240, 320))
    assert paired.header is header and (paired.height, paired.width) == (240, 320)
    # The frame first: its CameraInfo comes out when it arrives.
    header = msgs.header(sec=11)
    assert pairer.add_frame(0, header, (480, 640), (480, 640)) == []
    (late,) = pairer.add_info(0, info_msg(11))
    assert late.header is header and late.k == K
    # Too late: the frame gave up after the timeout; the CameraInfo then only waits in the buffer.
    assert pairer.add_frame(0, msgs.header(sec=12), (480, 640), (480, 640)) == []
    clock.now = 6.5
    assert pairer.add_info(0, info_msg(12)) == []
    assert pairer.values(0) == {"camera_info_received": "3", "camera_info_paired": "2",
                                "camera_info_unmatched": "1", "camera_info_malformed": "0"}
    # Bounded: at most `keep` frames wait; older ones are given up.
    for sec in range(20, 30):
        pairer.add_frame(0, msgs.header(sec=sec), (480, 640), (480, 640))
    pairer.finish()
    assert pairer.values(0)["camera_info_unmatched"] == "11"


def to_message(typestore, header, **kw):
    types = typestore.types
    roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    fields = {"height": FULL_H, "width": FULL_W, "distortion_model": "plumb_bob", "d": np.zeros(5), "k": np.array(K),
              "r": np.eye(3).ravel(), "p": np.array(P), "binning_x": 0, "binning_y": 0, "roi": roi}
    fields.update(kw)
    return types["sensor_msgs/msg/CameraInfo"](header=header, **fields)


class InfoSink:
    """An OutputSink keeping labels and CameraInfos in publication order."""

    def __init__(self) -> None:
        self.events = []
        self.lock = threading.Lock()

    def wanted(self, camera):
        return Wanted()

    def publish(self, outputs):
        with self.lock:
            self.events.append(("labels", outputs))

    def publish_camera_info(self, camera, info):
        with self.lock:
            self.events.append(("camera_info", camera, info))


def test_worker_publishes_scaled_camera_info_after_the_labels(tiny_model, msgs, typestore, scene):
    pipeline = SegmentationPipeline(tiny_model.pipeline.segmenter, output_size=(24, 40))
    sink = InfoSink()
    warnings = []
    worker = FrameWorker(pipeline, ["front"], sink, warn=warnings.append, camera_info_timeout_s=10.0)
    info = to_message(typestore, msgs.header(sec=3), height=48, width=64, k=np.array([50.0, 0, 32, 0, 50, 24, 0, 0, 1]),
                      p=np.array([50.0, 0, 32, 0, 0, 50, 24, 0, 0, 0, 1, 0]))
    worker.submit_camera_info(0, info)
    worker.submit_camera_info(0, to_message(typestore, msgs.header(sec=4), k=np.zeros(3)))  # malformed: logged
    image = msgs.image(scene(48, 64), "rgb8", header=msgs.header(sec=3))
    worker.submit(0, image)
    assert worker.run_once() == 1
    (kind, outputs), (kind2, camera, scaled) = sink.events
    assert (kind, kind2, camera) == ("labels", "camera_info", 0)
    assert scaled.header is outputs.header is image.header
    assert (scaled.height, scaled.width) == outputs.labels.data.shape == (24, 40)
    np.testing.assert_allclose(scaled.k, [50 * 40 / 64, 0, 32 * 40 / 64, 0, 25, 12, 0, 0, 1])
    assert any("CameraInfo skipped" in w for w in warnings)
    (status,) = worker.statuses("n", DiagnosticThresholds())
    assert (status.values["camera_info_paired"], status.values["camera_info_malformed"]) == ("1", "1")
