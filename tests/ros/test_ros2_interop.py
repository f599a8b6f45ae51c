"""Both transports against real ROS 2 peers, on loopback.

- rclpy publishers (Image, CompressedImage) feed ``mfuser-node --transport dds``; rclpy subscriptions get labels,
  colour, LabelInfo (transient local, joined late) and /diagnostics with the input headers; no Jazzy peer logs
  "Failed to parse type hash"; the ROS 2 CLI sees the bare-DDS node as a ROS 2 node.
- the bare-DDS client (cyclonedds) feeds the rclpy node and reads its outputs.
- ``ros2 topic info -v`` shows the same types, type hashes and QoS for both transports' endpoints.

Skipped where ROS 2 is missing; CI sources the shared ROS 2 so it runs there.
"""

from __future__ import annotations

import os
import re
import signal
import sys

import cv2
import numpy as np
import pytest
from ros2_operator import BUNDLED_MODEL, REPO, Peer, Process, domain_id, rgb_image, ros2, ros2_available

if reason := ros2_available():
    pytest.skip(reason, allow_module_level=True)
pytest.importorskip("cyclonedds", reason="cyclonedds is part of the [ros] extra")

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import LabelInfo

from mfuser_model.classes import CITYSCAPES_CLASSES
from mfuser_ros.node.type_hash import type_hash

pytestmark = [pytest.mark.ros, pytest.mark.slow]

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
PARAMS = ["-p", "image_topics=[front/image_raw, rear/image_raw/compressed]", "-p", "warmup=false",
          "-p", "diagnostics_period_s=0.5", "-p", f"checkpoint={BUNDLED_MODEL}"]


def start_node(transport: str, ros_domain_id: int) -> Process:
    """``mfuser-node --transport <transport>`` from this checkout, in its own process."""
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros_domain_id), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mfuser_ros.node.cli", "--transport", transport,
           "--domain-id", str(ros_domain_id), "--config", str(REPO / "config" / "mfuser_node.yaml"), *PARAMS]
    return Process(cmd, env, cwd=REPO)


def wait_for_line(proc: Process, text: str) -> None:
    """Wait until the node prints ``text`` (it does once it serves its topics)."""
    if not proc.wait_for(re.escape(text), 180.0):
        pytest.fail(f"the node did not start ({text!r} never printed):\n{proc.output[-3000:]}")


def stop_node(proc: Process) -> str:
    """SIGINT, then the node's output (killed after 30 s if it hangs)."""
    proc.signal(signal.SIGINT)
    if proc.wait(30.0) is None:
        proc.close()
        pytest.fail(f"node did not exit within 30 s of SIGINT:\n{proc.output[-3000:]}")
    return proc.output


def jpeg_msg(stamp_sec: int) -> CompressedImage:
    y, x = np.mgrid[0:64, 0:80]
    bgr = np.stack([x * 3, y * 3, x + y], -1).astype(np.uint8)
    msg = CompressedImage(format="jpeg", data=cv2.imencode(".jpg", bgr)[1].tobytes())
    msg.header.frame_id = "rear_optical"
    msg.header.stamp.sec = stamp_sec
    return msg


@pytest.fixture(scope="module")
def dds_node():
    """The bare-DDS node and its domain."""
    ros_domain_id = domain_id(40)
    proc = start_node("dds", ros_domain_id)
    wait_for_line(proc, "mfuser-node: ready")
    yield ros_domain_id
    out = stop_node(proc)
    assert proc.proc.returncode == 0, out[-3000:]


def test_rclpy_peers_and_the_bare_dds_node(dds_node, capfd):
    with Peer(dds_node, "rclpy_camera") as peer:
        labels = peer.subscribe(Image, "front/mfuser/labels", RELIABLE)
        colors = peer.subscribe(Image, "front/mfuser/color", RELIABLE)
        rear_labels = peer.subscribe(Image, "rear/mfuser/labels", RELIABLE)
        diagnostics = peer.subscribe(DiagnosticArray, "/diagnostics", RELIABLE)
        front = peer.node.create_publisher(Image, "front/image_raw", qos_profile_sensor_data)
        rear = peer.node.create_publisher(CompressedImage, "rear/image_raw/compressed", qos_profile_sensor_data)
        frame = rgb_image(96, 128, frame_id="front_optical", sec=1234)
        frame.header.stamp.nanosec = 5678

        def send() -> None:
            front.publish(frame)
            rear.publish(jpeg_msg(77))

        assert peer.spin_until(lambda: labels and colors and rear_labels and diagnostics, 60.0, tick=send)
        first = labels[0]
        assert (first.header.frame_id, first.header.stamp.sec, first.header.stamp.nanosec) == \
            ("front_optical", 1234, 5678)
        assert (first.encoding, first.height, first.width, first.step) == ("mono8", 96, 128, 128)
        assert max(first.data) < len(CITYSCAPES_CLASSES)
        assert (colors[0].header.frame_id, colors[0].encoding) == ("front_optical", "bgr8")
        assert (rear_labels[0].header.frame_id, rear_labels[0].height, rear_labels[0].width) == \
            ("rear_optical", 64, 80)
        names = {status.name for array in diagnostics for status in array.status}
        assert {"mfuser_node: front segmentation", "mfuser_node: rear segmentation"} <= names
        # A subscription that joins late still gets the class names (transient local).
        infos = peer.subscribe(LabelInfo, "rear/mfuser/label_info", LATCHED)
        assert peer.spin_until(lambda: infos, 20.0)
        assert [c.class_name for c in infos[0].class_map] == list(CITYSCAPES_CLASSES)
    assert "Failed to parse type hash" not in capfd.readouterr().err


def test_ros2_cli_sees_the_bare_dds_node_as_a_ros2_node(dds_node):
    env = {**os.environ, "ROS_DOMAIN_ID": str(dds_node)}
    nodes = ros2(env, "node", "list", "--no-daemon", "--spin-time", "3")
    assert "/mfuser_node" in nodes.stdout.split(), nodes.stdout + nodes.stderr
    info = ros2(env, "topic", "info", "-v", "--no-daemon", "--spin-time", "3", "/front/mfuser/labels")
    assert info.returncode == 0, info.stderr
    assert "Failed to parse type hash" not in info.stderr
    publisher = info.stdout.split("Subscription count")[0]
    assert "Type: sensor_msgs/msg/Image" in info.stdout
    assert "Node name: mfuser_node" in publisher and "_CREATED_BY_BARE_DDS_APP_" not in publisher, info.stdout
    assert f"Topic type hash: {type_hash('sensor_msgs/msg/Image')}" in publisher, info.stdout
    assert "Reliability: RELIABLE" in publisher and "Durability: VOLATILE" in publisher, info.stdout


@pytest.fixture(scope="module")
def ros_node():
    """The rclpy lifecycle node (``--transport ros``) and its domain; ready once it logs that it segments."""
    ros_domain_id = domain_id(41)
    proc = start_node("ros", ros_domain_id)
    wait_for_line(proc, "segmenting front/image_raw")
    yield ros_domain_id
    out = stop_node(proc)
    assert proc.proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def test_bare_dds_client_reads_the_rclpy_node(ros_node):
    from test_dds import Camera, send_until_reply
    from test_dds import rgb_image as dds_image

    from mfuser_ros.node.dds import LabelInfo_, Time_

    camera = Camera(ros_node)
    stamp = Time_(321, 9)
    replies = send_until_reply(camera.front, lambda: dds_image(stamp), camera.front_labels,
                               lambda r: r.header.stamp == stamp, attempts=60)
    labels = next(r for r in replies if r.header.stamp == stamp)
    assert (labels.header.frame_id, labels.encoding, labels.height, labels.width) == \
        ("front_optical", "mono8", 96, 128)
    late = camera.reader("front/mfuser/label_info", LabelInfo_, depth=1, transient_local=True)
    infos = camera.collect(late, lambda got: len(got) > 0, 20.0)
    assert [c.class_name for c in infos[0].class_map] == list(CITYSCAPES_CLASSES)
    arrays = camera.collect(camera.diagnostics, lambda got: len(got) > 0, 20.0)
    assert any(s.name == "/mfuser_node: front segmentation" for a in arrays for s in a.status)


def _endpoints(info: str) -> list[str]:
    """The node's endpoint blocks of ``ros2 topic info -v``, without the GID (unique to every endpoint)."""
    blocks = [b.strip() for b in info.split("\n\n") if b.strip().startswith("Node name: mfuser_node\n")]
    return sorted(re.sub(r"^GID: .*\n", "", b, flags=re.MULTILINE) for b in blocks)


@pytest.mark.parametrize("topic", ["/front/mfuser/labels", "/front/image_raw", "/front/mfuser/label_info",
                                   "/diagnostics"])
def test_topic_info_is_the_same_for_both_transports(dds_node, ros_node, topic):
    infos = []
    for ros_domain_id in (dds_node, ros_node):
        result = ros2({**os.environ, "ROS_DOMAIN_ID": str(ros_domain_id)}, "topic", "info", "-v", "--no-daemon",
                      "--spin-time", "3", topic)
        assert result.returncode == 0, result.stderr
        infos.append(result.stdout)
    dds, ros = (_endpoints(i) for i in infos)
    assert dds, infos[0]
    assert dds == ros, f"bare DDS:\n{infos[0]}\nrclpy:\n{infos[1]}"
