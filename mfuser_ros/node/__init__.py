"""The live node: camera messages in, label images out.

- ``config``: NodeConfig, the node's parameters, loaded strictly from a ROS 2 parameter file.
- ``conversions``: sensor_msgs/Image and CompressedImage <-> numpy (matches rosbags-image), output images.
- ``pipeline``: decode -> model -> encode, the latest-frame worker with cross-camera batching.
- ``stats``: per-camera statistics and /diagnostics statuses.
- ``model_loader``: builds the segmenter for a NodeConfig and releases it.
- ``lifecycle_node``: the rclpy lifecycle node (``ros2 run mfuser_ros mfuser_node``); the only rclpy importer.
- ``dds``: the same node over bare cyclonedds with ROS 2 wire conventions (``mfuser-node --transport dds``).
- ``cli``: the ``mfuser-node`` command.
"""
