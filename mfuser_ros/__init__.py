"""MFuser on ROS 2: camera images in, semantic label images out.

Two sides, dependencies one way (replay -> node -> mfuser_model):
- ``mfuser_ros.node``: the live node (config, conversions, pipeline, stats, model loading, the rclpy lifecycle node,
  the bare-DDS transport and the ``mfuser-node`` command). Only ``node.lifecycle_node`` imports rclpy; only
  ``node.dds`` imports cyclonedds.
- ``mfuser_ros.replay``: rosbag replay evaluation (bag I/O, the runner, evaluation and report, ``mfuser-replay``,
  the demo bag maker).
"""
