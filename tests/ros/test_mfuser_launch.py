"""launch_testing proof of life: mfuser.launch.py starts the node, an image goes in, labels come out.

Collected by the launch_testing pytest plugin in a ROS 2 workspace (``colcon test``); skipped where ROS 2 is not
installed (launch_testing and rclpy are not on PyPI).
"""

from __future__ import annotations

import os
import time
import unittest
from pathlib import Path

import pytest

pytest.importorskip("launch_testing", reason="launch_testing needs a ROS 2 installation")
rclpy = pytest.importorskip("rclpy", reason="rclpy needs a ROS 2 installation (not installable from PyPI)")

import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

import launch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.launch_test
def generate_test_description():
    """The package's launch file with the shipped config and one camera topic."""
    os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 200)
    include = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO / "launch" / "mfuser.launch.py")),
        launch_arguments={"config": str(REPO / "config" / "mfuser_node.yaml"), "image_topics": "cam/image_raw",
                          "preset": "tiny-eva02", "namespace": "test"}.items())
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])


class TestLabels(unittest.TestCase):
    """Active test: publish images until labels arrive (bounded)."""

    def test_labels_arrive_with_the_input_header(self):
        rclpy.init()
        node = rclpy.create_node("launch_test_camera")
        try:
            received = []
            node.create_subscription(Image, "/test/cam/mfuser/labels", received.append, 10)
            pub = node.create_publisher(Image, "/test/cam/image_raw", 1)
            msg = Image(height=48, width=64, encoding="rgb8", step=192, data=bytes(48 * 64 * 3))
            msg.header.frame_id = "cam_optical"
            deadline = time.monotonic() + 90.0
            while not received and time.monotonic() < deadline:
                pub.publish(msg)
                rclpy.spin_once(node, timeout_sec=0.5)
            assert received, "no labels within 90 s"
            assert received[0].header.frame_id == "cam_optical"
            assert received[0].encoding == "mono8"
        finally:
            node.destroy_node()
            rclpy.shutdown()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    """The node exits cleanly when the launch ends."""

    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
