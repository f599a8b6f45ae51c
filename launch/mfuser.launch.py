"""Launch the MFuser segmentation lifecycle node.

    ros2 launch mfuser_ros mfuser.launch.py image_topics:=front/image_raw,rear/image_raw/compressed \
        preset:=mfuser-eva02-large checkpoint:=/models/mfuser.safetensors namespace:=perception

Arguments left empty keep the value from the parameter file (``config``). The node configures and activates
itself (parameter ``autostart``); set ``autostart:=false`` to drive it with ``ros2 lifecycle set``.
"""

from __future__ import annotations

import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

from launch import LaunchContext, LaunchDescription


def _overrides(context: LaunchContext) -> dict:
    """Parameters given as launch arguments; empty ones fall back to the parameter file."""
    params: dict = {"use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() == "true"}
    topics = LaunchConfiguration("image_topics").perform(context)
    if topics.strip():
        params["image_topics"] = [t.strip() for t in topics.split(",") if t.strip()]
    for name in ("preset", "checkpoint", "device", "precision", "decoder_backend"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            params[name] = value
    autostart = LaunchConfiguration("autostart").perform(context)
    if autostart:
        params["autostart"] = autostart.lower() == "true"
    return params


def _launch_node(context: LaunchContext) -> list:
    config = LaunchConfiguration("config").perform(context)
    if not os.path.isfile(config):
        msg = f"mfuser.launch.py: config file {config!r} not found"
        raise FileNotFoundError(msg)
    return [
        LifecycleNode(
            package="mfuser_ros",
            executable="mfuser_node",
            name=LaunchConfiguration("node_name").perform(context),
            namespace=LaunchConfiguration("namespace").perform(context),
            parameters=[config, _overrides(context)],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    """Launch arguments + the node (evaluated in an OpaqueFunction so lists and files can be checked)."""
    default_config = [FindPackageShare("mfuser_ros"), "/config/mfuser_node.yaml"]
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config, description="ROS 2 parameter file"),
        DeclareLaunchArgument("preset", default_value="", description="model preset (empty: from config)"),
        DeclareLaunchArgument("checkpoint", default_value="", description="model checkpoint (empty: from config)"),
        DeclareLaunchArgument("image_topics", default_value="",
                              description="comma-separated camera topics (empty: from config)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("node_name", default_value="mfuser_node", description="node name"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
        DeclareLaunchArgument("device", default_value="", description="cpu or cuda[:N] (empty: from config)"),
        DeclareLaunchArgument("precision", default_value="", description="fp32/fp16/bf16 (empty: from config)"),
        DeclareLaunchArgument("decoder_backend", default_value="",
                              description="torch/onnxruntime/tensorrt (empty: from config)"),
        DeclareLaunchArgument("autostart", default_value="", description="self-activate (empty: from config)"),
        OpaqueFunction(function=_launch_node),
    ])
