"""SIGINT (Ctrl-C in the terminal: ros2 launch and the node alike) and SIGTERM (``kill`` of the node's process)
under ``ros2 launch``, with the node idle and with a frame in the model: the node shuts down in order, launch
reports it finished cleanly, ``ros2 launch`` exits 0 within seconds, and nothing prints a traceback.

(SIGTERM to ``ros2 launch`` itself is launch's business: it cancels at once and warns about orphaned processes.)

Skipped where ROS 2 (ros2 CLI, rclpy, launch) or colcon is missing; CI sources the shared ROS 2 so it runs there.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml
from ros2_operator import (
    BUNDLED_MODEL,
    Peer,
    colcon_workspace,
    domain_id,
    launch,
    rgb_image,
    ros2_available,
    sourced_env,
)

if reason := ros2_available():
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.ros, pytest.mark.slow]


# Ctrl-C with the node idle is the end of test_colcon_install's `ros2 launch` test (same assertions).
@pytest.mark.parametrize(("sig", "busy"), [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGTERM, True)],
                         ids=["SIGINT-frame-in-the-model", "SIGTERM-idle", "SIGTERM-frame-in-the-model"])
def test_signal_under_ros2_launch_exits_0_without_traceback(sig, busy, tmp_path):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    ws = colcon_workspace(False)
    ros_domain_id = domain_id(10 + 2 * int(sig) + busy)
    env = sourced_env(ws, ros_domain_id)
    params = tmp_path / "params.yaml"
    # Sliding windows of 128 px every 48 px: about a hundred model calls per VGA frame, so a frame stays in the
    # model for a second or more even on an idle machine.
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "image_topics": ["cam/image_raw"], "checkpoint": BUNDLED_MODEL, "warmup": False, "inference_mode": "slide",
        "crop_size": 128, "stride": 48}}}), encoding="utf-8")
    with launch(env, f"config:={params}") as proc, Peer(ros_domain_id) as peer:
        assert proc.wait_for(r"segmenting cam/image_raw", 180.0), proc.output[-3000:]
        node_pid = int(proc.wait_for(r"process started with pid \[(\d+)\]", 1.0)[1])
        if busy:
            # Frames sent faster than the model finishes them: when the first labels come back the next frame is
            # already waiting, and the worker is in the middle of it a moment later, when the signal comes.
            labels = peer.subscribe(Image, "cam/mfuser/labels", 10)
            pub = peer.node.create_publisher(Image, "cam/image_raw", qos_profile_sensor_data)
            frame = rgb_image(480, 640)
            assert peer.spin_until(lambda: labels, 120.0, tick=lambda: pub.publish(frame), period=0.2), \
                proc.output[-3000:]
            peer.spin_until(lambda: False, 0.3, tick=lambda: pub.publish(frame), period=0.1)
        t0 = time.monotonic()
        if sig == signal.SIGINT:
            proc.signal_group(sig)
        else:
            os.kill(node_pid, sig)
        code = proc.wait(30.0)
        elapsed = time.monotonic() - t0
    output = proc.output
    assert code == 0, output[-3000:]
    assert elapsed < 20.0, f"took {elapsed:.1f} s to exit"
    assert f"{sig.name}: shutting down" in output, output[-3000:]
    assert ("waiting for the frame in the model" in output) == busy, output[-3000:]
    assert "process has finished cleanly" in output, output[-3000:]
    assert "Traceback" not in output and "Error" not in output, output[-3000:]
