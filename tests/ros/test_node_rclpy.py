"""The rclpy lifecycle node in-process: transitions, parameters, one image in -> labels out with its header.

Needs a ROS 2 installation (rclpy, sensor_msgs, vision_msgs, diagnostic_msgs), which cannot be installed from PyPI;
without it the module is skipped. In a sourced ROS 2 workspace: ``colcon test --packages-select mfuser_ros``.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy needs a ROS 2 installation (not installable from PyPI)")
pytest.importorskip("vision_msgs", reason="vision_msgs comes with ROS 2 (ros-<distro>-vision-msgs)")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from mfuser_ros.node.lifecycle_node import MFuserNode, ros_qos  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=1 + os.getpid() % 200)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def make_node(context, **params):
    overrides = {"image_topics": ["cam/image_raw"], "warmup": False, "autostart": False,
                 "allow_random_weights": True, **params}
    return MFuserNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])


def test_invalid_parameter_fails_configure(context):
    node = make_node(context, device="gpu0")
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.config is None
    finally:
        node.destroy_node()


def test_no_checkpoint_is_refused_at_activate_unless_asked(context):
    node = make_node(context, allow_random_weights=False)  # checkpoint "" (the default): random weights
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
        assert node.model is None
    finally:
        node.destroy_node()


def test_image_in_labels_out_with_the_input_header(context):
    node = make_node(context)
    peer = rclpy.create_node("camera", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(peer)
    received = []
    peer.create_subscription(Image, "cam/mfuser/labels", received.append, ros_qos("reliable", 10))
    pub = peer.create_publisher(Image, "cam/image_raw", ros_qos("sensor_data", 1))
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        msg = Image(height=48, width=64, encoding="rgb8", step=192)
        msg.header.frame_id = "cam_optical"
        msg.header.stamp.sec = 42
        msg.data = np.zeros(48 * 64 * 3, np.uint8).tobytes()
        deadline = time.monotonic() + 60.0
        while not received and time.monotonic() < deadline:
            pub.publish(msg)
            executor.spin_once(timeout_sec=0.2)
        assert received, "no labels within 60 s"
        labels = received[0]
        assert (labels.header.frame_id, labels.header.stamp.sec) == ("cam_optical", 42)
        assert (labels.encoding, labels.height, labels.width) == ("mono8", 48, 64)
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.model is None  # released on deactivate
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        executor.shutdown()
        peer.destroy_node()
        node.destroy_node()


def test_scaled_camera_info_compressed_labels_and_palette_parameter(context):
    import cv2
    from sensor_msgs.msg import CameraInfo, CompressedImage

    from mfuser_model.classes import CITYSCAPES_PALETTE, palette_to_hex

    node = make_node(context, output_width=32, output_height=24, png_level=9)
    peer = rclpy.create_node("camera_driver", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(peer)
    got = {"labels": [], "png": [], "info": []}
    qos = ros_qos("reliable", 10)
    peer.create_subscription(Image, "cam/mfuser/labels", got["labels"].append, qos)
    peer.create_subscription(CompressedImage, "cam/mfuser/labels/compressed", got["png"].append, qos)
    peer.create_subscription(CameraInfo, "cam/mfuser/camera_info", got["info"].append, qos)
    image_pub = peer.create_publisher(Image, "cam/image_raw", ros_qos("sensor_data", 1))
    info_pub = peer.create_publisher(CameraInfo, "cam/camera_info", ros_qos("sensor_data", 1))
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        # The legend a viewer reads: LabelInfo's names, and this parameter's colours (the model's palette).
        assert list(node.get_parameter("color_palette").value) == list(palette_to_hex(CITYSCAPES_PALETTE))
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        image = Image(height=48, width=64, encoding="rgb8", step=192)
        image.header.frame_id, image.header.stamp.sec = "cam_optical", 42
        image.data = np.random.default_rng(0).integers(0, 256, 48 * 64 * 3, dtype=np.uint8).tobytes()
        info = CameraInfo(height=48, width=64, distortion_model="plumb_bob", d=[0.0] * 5)
        info.header = image.header
        info.k = [60.0, 0.0, 32.0, 0.0, 61.0, 24.0, 0.0, 0.0, 1.0]
        info.p = [60.0, 0.0, 32.0, -6.0, 0.0, 61.0, 24.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        deadline = time.monotonic() + 60.0
        while not all(got.values()) and time.monotonic() < deadline:
            info_pub.publish(info)
            image_pub.publish(image)
            for _ in range(5):
                executor.spin_once(timeout_sec=0.05)
        assert all(got.values()), f"missing outputs within 60 s: {[k for k, v in got.items() if not v]}"
        labels, png, scaled = got["labels"][0], got["png"][0], got["info"][0]
        assert (labels.height, labels.width) == (24, 32)
        for msg in (png, scaled):
            assert (msg.header.frame_id, msg.header.stamp.sec) == ("cam_optical", 42)
        assert (scaled.height, scaled.width) == (24, 32)
        np.testing.assert_allclose(scaled.k, [30.0, 0.0, 16.0, 0.0, 30.5, 12.0, 0.0, 0.0, 1.0])
        np.testing.assert_allclose(scaled.p, [30.0, 0.0, 16.0, -3.0, 0.0, 30.5, 12.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        assert png.format == "mono8; png compressed "
        decoded = cv2.imdecode(np.frombuffer(bytes(png.data), np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(decoded, np.frombuffer(bytes(labels.data), np.uint8).reshape(24, 32))
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        executor.shutdown()
        peer.destroy_node()
        node.destroy_node()


@pytest.mark.slow
def test_a_worker_that_dies_is_fatal_and_visible(context):
    """The rclpy node with an injected model bug: an ERROR status on /diagnostics, then exit status 1."""
    import subprocess
    import sys
    from pathlib import Path

    from diagnostic_msgs.msg import DiagnosticArray

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, ROS_DOMAIN_ID=str(context.get_domain_id()))
    proc = subprocess.Popen(
        [sys.executable, str(repo / "tests/ros/faulty_node.py"), "--transport", "ros", "-p",
         "image_topics=[cam/image_raw]", "-p", "warmup=false", "-p", "diagnostics_period_s=0.2",
         "-p", "allow_random_weights=true"],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peer = rclpy.create_node("camera", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(peer)
    levels = []
    peer.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda msg: levels.extend(s.level[0] for s in msg.status), 50)
    pub = peer.create_publisher(Image, "cam/image_raw", ros_qos("sensor_data", 1))
    msg = Image(height=48, width=64, encoding="rgb8", step=192)
    msg.data = np.zeros(48 * 64 * 3, np.uint8).tobytes()
    try:
        deadline = time.monotonic() + 60.0
        while proc.poll() is None and time.monotonic() < deadline:
            pub.publish(msg)
            executor.spin_once(timeout_sec=0.1)
        for _ in range(10):
            executor.spin_once(timeout_sec=0.05)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        executor.shutdown()
        peer.destroy_node()
    assert proc.returncode == 1, output[-3000:]
    assert 2 in levels, "an ERROR status must go out before the exit"
    assert "worker stopped: KeyError: 'injected bug'" in output
    assert "terminate called" not in output
