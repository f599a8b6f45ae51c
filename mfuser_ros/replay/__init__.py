"""Rosbag replay evaluation: recorded drives through the live node's own pipeline, scored against ground truth.

- ``bagio``: rosbag2 (mcap, sqlite3) and ROS 1 bags read and written with ``rosbags``, damage reported by position.
- ``runner``: ``run_replay``, one bag through ``mfuser_ros.node.pipeline``, output bag and report.
- ``evaluation``: ground truth (label topics or PNG folders), stamp matching, confusion matrices, latency, report.
- ``cli``: the ``mfuser-replay`` command.
- ``demo_bag``: ``mfuser-make-demo-bag``, a synthetic multi-camera drive with ground truth.

Dependencies run one way: replay imports the node's modules, the node never imports replay.
"""
