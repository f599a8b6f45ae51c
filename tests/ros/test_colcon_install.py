"""The README's ROS section, as written: ``colcon build`` (with and without ``--symlink-install``), ``source
install/setup.bash``, then ``ros2 launch mfuser_ros mfuser.launch.py ...`` or ``ros2 run mfuser_ros mfuser_node``,
in a temporary workspace, with the code, presets, parameter file and bundled model all taken from the install.

Skipped where ROS 2 (ros2 CLI, rclpy, launch) or colcon is missing; CI sources the shared ROS 2 so it runs there.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ros2_operator import (
    BUNDLED_MODEL,
    REPO,
    Peer,
    Process,
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

PROBE = """
import mfuser_model, mfuser_model.config as config, mfuser_model.resources as resources
print(mfuser_model.__file__)
print(config.resolve_preset("tiny-eva02"))
print(resources.resolve_path("package://mfuser_ros/config/mfuser_node.yaml"))
print(resources.resolve_path("{model}"))
"""


def labels_from_running_node(ros_domain_id: int, namespace: str, node: Process) -> object:
    """Publish camera frames on ``<namespace>/cam/image_raw`` until a label image comes back (bounded)."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    with Peer(ros_domain_id) as peer:
        labels = peer.subscribe(Image, f"{namespace}/cam/mfuser/labels", 10)
        pub = peer.node.create_publisher(Image, f"{namespace}/cam/image_raw", qos_profile_sensor_data)
        frame = rgb_image()
        assert peer.spin_until(lambda: labels, 120.0, tick=lambda: pub.publish(frame)), \
            f"no labels within 120 s; node output:\n{node.output[-3000:]}"
        return labels[0]


@pytest.mark.parametrize("symlink_install", [False, True], ids=["copy", "symlink-install"])
def test_installed_package_finds_its_presets_config_and_model(symlink_install, tmp_path):
    ws = colcon_workspace(symlink_install)
    env = sourced_env(ws, domain_id(1))
    probe = subprocess.run([sys.executable, "-c", PROBE.format(model=BUNDLED_MODEL)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, check=False)
    assert probe.returncode == 0, probe.stderr
    module, preset, params, model = (Path(line) for line in probe.stdout.split())
    # Copied: everything sits in the install prefix. Symlinked: the code and data are links into src/.
    root = ws / "install" / "mfuser_ros" if not symlink_install else ws
    for path in (module, preset, params, model):
        assert ws in path.parents, path
        assert root in path.parents or root in path.resolve().parents, path
    assert preset.name == "tiny-eva02.yaml" and model.suffix == ".safetensors"
    prefix = subprocess.run(["ros2", "pkg", "prefix", "mfuser_ros"], env=env, capture_output=True, text=True,
                            timeout=60, check=True).stdout.strip()
    assert Path(prefix) == ws / "install" / "mfuser_ros"


def test_ros2_launch_from_the_install_gives_labels_and_ctrl_c_exits_0():
    ws = colcon_workspace(False)
    ros_domain_id = domain_id(2)
    env = sourced_env(ws, ros_domain_id)
    with launch(env, "image_topics:=cam/image_raw", f"checkpoint:={BUNDLED_MODEL}", "namespace:=colcon") as proc:
        assert proc.wait_for(r"segmenting cam/image_raw", 180.0), proc.output[-3000:]
        labels = labels_from_running_node(ros_domain_id, "/colcon", proc)
        assert (labels.header.frame_id, labels.header.stamp.sec) == ("cam_optical", 42)
        assert (labels.encoding, labels.height, labels.width) == ("mono8", 48, 64)
        assert max(labels.data) < 19
        # Ctrl-C in the terminal: SIGINT to ros2 launch and the node alike.
        proc.signal_group(signal.SIGINT)
        assert proc.wait(30.0) == 0, proc.output[-3000:]
    assert "SIGINT: shutting down" in proc.output
    assert "waiting for the frame in the model" not in proc.output  # idle: the busy case is in test_node_signals
    assert "process has finished cleanly" in proc.output, proc.output[-3000:]
    assert "Traceback" not in proc.output and "Error" not in proc.output, proc.output[-3000:]


def test_ros2_run_from_a_symlink_install_gives_labels():
    ws = colcon_workspace(True)
    ros_domain_id = domain_id(3)
    env = sourced_env(ws, ros_domain_id)
    cmd = ["ros2", "run", "mfuser_ros", "mfuser_node", "--ros-args", "-r", "__ns:=/run", "-p",
           "image_topics:=[cam/image_raw]", "-p", f"checkpoint:={BUNDLED_MODEL}", "-p", "warmup:=false"]
    with Process(cmd, env, cwd=ws) as proc:
        assert proc.wait_for(r"segmenting cam/image_raw", 180.0), proc.output[-3000:]
        labels = labels_from_running_node(ros_domain_id, "/run", proc)
        assert (labels.encoding, labels.height, labels.width) == ("mono8", 48, 64)
        proc.signal_group(signal.SIGINT)  # Ctrl-C: ros2 run waits for the node, which gets it too
        assert proc.wait(30.0) == 0, proc.output[-3000:]
    assert "SIGINT: shutting down" in proc.output
    assert "Traceback" not in proc.output, proc.output[-3000:]


def test_every_ros_dependency_in_package_xml_is_an_installed_ros2_package():
    """rosdep resolves package.xml; each ROS package named there must exist (here: in the sourced Jazzy)."""
    import xml.etree.ElementTree as ET

    from mfuser_model.resources import ament_prefixes

    root = ET.parse(REPO / "package.xml").getroot()
    tags = ("depend", "build_depend", "exec_depend", "test_depend")
    names = sorted({e.text.strip() for tag in tags for e in root.iter(tag)} - {"mfuser_ros"})
    ros_packages = [n for n in names if not n.startswith("python3-")]
    assert "rclpy" in ros_packages
    missing = [n for n in ros_packages if not ament_prefixes(n)]
    assert missing == [], f"package.xml names packages no ROS 2 prefix provides: {missing}"
