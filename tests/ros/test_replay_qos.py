"""Output bags carry offered QoS profiles the way rosbag2 (Jazzy, metadata version 9) records them, so
``ros2 bag play`` offers them again: copied inputs keep the QoS they were recorded with, the node's outputs get the
node's QoS. Checked in metadata.yaml (as YAML, field by field) and in the storage itself (mcap channel metadata,
the sqlite3 topics table), read back with rosbags.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import yaml

from mfuser_ros.node.config import NodeConfig
from mfuser_ros.replay.bagio import BagInput, ros1_qos, ros2_qos
from mfuser_ros.replay.runner import ReplayOptions, run_replay

rosbag2 = pytest.importorskip("rosbags.rosbag2", reason="rosbags is part of the [ros] extra")
highlevel = pytest.importorskip("rosbags.highlevel")
interfaces = pytest.importorskip("rosbags.interfaces")

IMAGE = "sensor_msgs/msg/Image"
T0 = 1_700_000_000_000_000_000
INFINITE = {"sec": 9223372036, "nsec": 854775807}
# A camera driver's sensor-data publisher and a latched ground-truth publisher, as a Jazzy recorder stores them
# (history is not part of discovery: rosbag2 records it as unknown, depth 0).
CAMERA_QOS = interfaces.Qos(
    interfaces.QosHistory.UNKNOWN, 0, interfaces.QosReliability.BEST_EFFORT, interfaces.QosDurability.VOLATILE,
    interfaces.QosTime(**INFINITE), interfaces.QosTime(**INFINITE), interfaces.QosLiveliness.AUTOMATIC,
    interfaces.QosTime(**INFINITE), False)
GT_QOS = CAMERA_QOS._replace(reliability=interfaces.QosReliability.RELIABLE,
                             durability=interfaces.QosDurability.TRANSIENT_LOCAL)


def write_input(path, msgs, typestore, storage: str):
    plugin = rosbag2.StoragePlugin.MCAP if storage == "mcap" else rosbag2.StoragePlugin.SQLITE3
    with rosbag2.Writer(path, version=9, storage_plugin=plugin) as w:
        cam = w.add_connection("/front/image_raw", IMAGE, typestore=typestore, offered_qos_profiles=[CAMERA_QOS])
        gt = w.add_connection("/front/ground_truth/labels", IMAGE, typestore=typestore, offered_qos_profiles=[GT_QOS])
        for i in range(2):
            t = T0 + i * 100_000_000
            header = msgs.header(sec=t // 10**9, nanosec=t % 10**9, frame_id="front")
            pixels = np.full((32, 48, 3), 40 * i, np.uint8)
            w.write(cam, t, typestore.serialize_cdr(msgs.image(pixels, "rgb8", header), IMAGE))
            labels = np.full((32, 48), i, np.uint8)
            w.write(gt, t + 1, typestore.serialize_cdr(msgs.image(labels, "mono8", header), IMAGE))
    return path


def qos_by_topic(path) -> dict[str, list]:
    with highlevel.AnyReader([path]) as reader:
        return {c.topic: c.ext.offered_qos_profiles for c in reader.connections}


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_output_bag_records_input_and_node_qos_like_rosbag2(tmp_path, msgs, typestore, tiny_model, storage):
    bag = write_input(tmp_path / "drive", msgs, typestore, storage)
    node = NodeConfig(preset="tiny-eva02", warmup=False, output_qos="reliable", output_qos_depth=3)
    result = run_replay(ReplayOptions(bag=bag, out=tmp_path / "out", node=node, storage=storage, progress=False),
                        loaded=tiny_model)
    assert result.exit_code == 0
    node_qos = ros2_qos("reliable", 3)
    expected = {"/front/image_raw": [CAMERA_QOS], "/front/ground_truth/labels": [GT_QOS],
                "/front/mfuser/labels": [node_qos], "/front/mfuser/color": [node_qos]}

    # metadata.yaml, with the keys and value forms of rosbag2's encoder (version 9: policies by name; rosbag2
    # reads mappings by key, so their order does not matter).
    meta = yaml.safe_load((result.output_bag / "metadata.yaml").read_text(encoding="utf-8"))
    info = meta["rosbag2_bagfile_information"]
    assert info["version"] == 9
    topics = {t["topic_metadata"]["name"]: t["topic_metadata"] for t in info["topics_with_message_count"]}
    assert set(topics) == set(expected)
    labels_qos = topics["/front/mfuser/labels"]["offered_qos_profiles"]
    assert labels_qos == [{"history": "keep_last", "depth": 3, "reliability": "reliable", "durability": "volatile",
                           "deadline": INFINITE, "lifespan": INFINITE, "liveliness": "automatic",
                           "liveliness_lease_duration": INFINITE, "avoid_ros_namespace_conventions": False}]
    camera_qos = topics["/front/image_raw"]["offered_qos_profiles"][0]
    assert (camera_qos["reliability"], camera_qos["durability"]) == ("best_effort", "volatile")
    assert topics["/front/ground_truth/labels"]["offered_qos_profiles"][0]["durability"] == "transient_local"

    # Read back through metadata.yaml, then from the storage file alone (mcap channel metadata / sqlite3 table).
    assert qos_by_topic(result.output_bag) == expected
    (storage_file,) = [p for p in result.output_bag.iterdir() if p.suffix in (".mcap", ".db3")]
    assert qos_by_topic(storage_file) == expected
    if storage == "sqlite3":
        with sqlite3.connect(storage_file) as db:
            rows = dict(db.execute("SELECT name, offered_qos_profiles FROM topics"))
        assert yaml.safe_load(rows["/front/mfuser/color"]) == labels_qos


def test_ros1_qos_is_reliable_and_latched_topics_transient_local():
    assert ros1_qos(latching=False).reliability == interfaces.QosReliability.RELIABLE
    assert ros1_qos(latching=False).durability == interfaces.QosDurability.VOLATILE
    assert ros1_qos(latching=True).durability == interfaces.QosDurability.TRANSIENT_LOCAL


def test_input_topics_report_their_recorded_qos(tmp_path, msgs, typestore):
    bag = write_input(tmp_path / "drive", msgs, typestore, "mcap")
    with BagInput(bag) as reader:
        assert reader.topics["/front/image_raw"].qos == (CAMERA_QOS,)
        assert reader.topics["/front/ground_truth/labels"].qos == (GT_QOS,)
