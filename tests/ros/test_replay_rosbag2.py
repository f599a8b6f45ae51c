"""Bags as ROS 2's rosbag2 records them, which rosbags alone reads as empty.

rosbag2 cannot run here, so the fixtures reproduce what it writes, after rosbag2_py's own talker recordings
(rosbag2_py/test/resources/{mcap,sqlite3}/talker in ros2/rosbag2): metadata.yaml version 4 lists every QoS duration
as ``sec: 0, nsec: 0``, while the storage (mcap channel metadata ``offered_qos_profiles``, the sqlite3 ``topics``
table) holds what the rmw reported for "infinite", ``{2147483647 s, 4294967295 ns}``, serialized as yaml-cpp does.
The storage files are written with rosbags' Writer; only the QoS text and metadata.yaml are rosbag2's.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from mfuser_ros.node.config import NodeConfig
from mfuser_ros.replay.bagio import BagInput
from mfuser_ros.replay.cli import main
from mfuser_ros.replay.runner import ReplayOptions, run_replay

rosbag2 = pytest.importorskip("rosbags.rosbag2", reason="rosbags is part of the [ros] extra")
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime  # noqa: E402
from rosbags.rosbag2 import writer as rosbags_writer  # noqa: E402

T0 = 1585866235112411371  # the talker recording's start
IMAGE = "sensor_msgs/msg/Image"
STRING = "std_msgs/msg/String"
FOXY_INFINITE = QosTime(0x7FFFFFFF, 0xFFFFFFFF)  # what the rmw reported as "infinite"; rosbag2 keeps it in storage


def rosbag2_qos_text(profiles: list) -> str:
    """offered_qos_profiles as rosbag2 serializes them (yaml-cpp block style, policies as integers)."""
    def duration(name: str, t: QosTime) -> str:
        return f"  {name}:\n    sec: {t.sec}\n    nsec: {t.nsec}\n"

    return "\n".join(
        (f"- history: {q.history.value}\n  depth: {q.depth}\n  reliability: {q.reliability.value}\n"
         f"  durability: {q.durability.value}\n" + duration("deadline", q.deadline) + duration("lifespan", q.lifespan)
         + f"  liveliness: {q.liveliness.value}\n" + duration("liveliness_lease_duration", q.liveliness_lease_duration)
         + "  avoid_ros_namespace_conventions: false").rstrip("\n") for q in profiles)


def talker_qos(durability: QosDurability, duration: QosTime) -> Qos:
    """The talker recording's profile: history unknown, depth 0, reliable, automatic liveliness."""
    return Qos(QosHistory.UNKNOWN, 0, QosReliability.RELIABLE, durability, duration, duration, QosLiveliness.AUTOMATIC,
               duration, False)


def write_rosbag2_bag(path: Path, msgs, typestore, storage: str, frames: int = 3, monkeypatch=None) -> Path:
    """A talker-like bag (/topic strings, empty /parameter_events) plus a camera, as rosbag2 writes it."""
    plugin = rosbag2.StoragePlugin.MCAP if storage == "mcap" else rosbag2.StoragePlugin.SQLITE3
    stored = talker_qos(QosDurability.VOLATILE, FOXY_INFINITE)
    monkeypatch.setattr(rosbags_writer, "dump_qos_v8", rosbag2_qos_text)  # the storage gets rosbag2's exact text
    topics = (("/topic", STRING, frames), ("/parameter_events", "rcl_interfaces/msg/ParameterEvent", 0),
              ("/camera/image_raw", IMAGE, frames))
    with rosbag2.Writer(path, version=8, storage_plugin=plugin) as w:
        conns = {name: w.add_connection(name, msgtype, typestore=typestore, offered_qos_profiles=[stored])
                 for name, msgtype, _ in topics}
        for i in range(frames):
            t = T0 + i * 500_000_000
            w.write(conns["/topic"], t, typestore.serialize_cdr(typestore.types[STRING](data=f"Hello {i}"), STRING))
            header = msgs.header(sec=t // 10**9, nanosec=t % 10**9, frame_id="camera")
            pixels = np.full((24, 32, 3), 40 * i, np.uint8)
            w.write(conns["/camera/image_raw"], t + 1000,
                    typestore.serialize_cdr(msgs.image(pixels, "rgb8", header), IMAGE))
    # metadata.yaml as the talker recording's: version 4, QoS durations 0.
    listed = rosbag2_qos_text([talker_qos(QosDurability.VOLATILE, QosTime(0, 0))])
    entries = "".join(
        f"    - topic_metadata:\n        name: {name}\n        type: {msgtype}\n        serialization_format: cdr\n"
        f"        offered_qos_profiles: {listed!r}\n      message_count: {count}\n".replace("'", '"')
        for name, msgtype, count in topics)
    storage_file = next(p.name for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    (path / "metadata.yaml").write_text(
        f"rosbag2_bagfile_information:\n  version: 4\n  storage_identifier: {storage}\n  relative_file_paths:\n"
        f"    - {storage_file}\n  duration:\n    nanoseconds: {(frames - 1) * 500_000_000 + 1000}\n"
        f"  starting_time:\n    nanoseconds_since_epoch: {T0}\n  message_count: {2 * frames}\n"
        f"  topics_with_message_count:\n{entries}  compression_format: \"\"\n  compression_mode: \"\"\n")
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_fixture_holds_what_rosbag2_writes(tmp_path, msgs, typestore, monkeypatch, storage):
    bag = write_rosbag2_bag(tmp_path / "talker", msgs, typestore, storage, monkeypatch=monkeypatch)
    text = (bag / "metadata.yaml").read_text()
    assert "version: 4" in text and "sec: 0\\n    nsec: 0" in text and "2147483647" not in text
    if storage == "sqlite3":
        con = sqlite3.connect(next(bag.glob("*.db3")))
        qos = dict(con.execute("SELECT name, offered_qos_profiles FROM topics"))
        con.close()
        assert qos["/topic"].startswith("- history: 3\n  depth: 0\n  reliability: 1\n  durability: 2\n  deadline:\n"
                                        "    sec: 2147483647\n    nsec: 4294967295\n")
    else:
        data = next(bag.glob("*.mcap")).read_bytes()
        assert b"offered_qos_profiles" in data and b"    sec: 2147483647\n    nsec: 4294967295\n" in data


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rosbag2_directory_reads_every_message(tmp_path, msgs, typestore, monkeypatch, storage):
    bag = write_rosbag2_bag(tmp_path / "talker", msgs, typestore, storage, monkeypatch=monkeypatch)
    storage_file = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    for path in (bag, storage_file):
        with BagInput(path) as reader:
            assert reader.topics["/camera/image_raw"].count == 3
            read = [m.topic for _, m in reader.messages(["/topic", "/camera/image_raw"])]
        assert read.count("/topic") == read.count("/camera/image_raw") == 3, path


def test_rosbag2_directory_is_replayed_in_full(tmp_path, msgs, typestore, monkeypatch, tiny_model):
    bag = write_rosbag2_bag(tmp_path / "talker", msgs, typestore, "mcap", monkeypatch=monkeypatch)
    result = run_replay(ReplayOptions(bag=bag, out=tmp_path / "report", progress=False, montage_rows=0,
                                      node=NodeConfig(preset="tiny-eva02", warmup=False)), loaded=tiny_model)
    assert result.exit_code == 0 and result.summary["partial"] is False
    assert result.summary["frames"]["read"] == result.summary["frames"]["processed"] == 3


@pytest.mark.parametrize(("edit", "expected"), [
    (("message_count: 3\n  compression", "message_count: 5\n  compression"),  # more frames than the storage holds
     "PARTIAL: /camera/image_raw: 3 of the 5 frames the bag's metadata announces were read"),
    (("name: /camera/image_raw", "name: /cam/image_raw"),  # a camera topic the storage does not have
     "PARTIAL: no camera frame was read from the bag (camera topics: /cam/image_raw)"),
])
def test_frames_short_of_the_metadata_fail_the_run(tmp_path, msgs, typestore, monkeypatch, capsys, edit, expected):
    bag = write_rosbag2_bag(tmp_path / "talker", msgs, typestore, "mcap", monkeypatch=monkeypatch)
    meta = bag / "metadata.yaml"
    meta.write_text(meta.read_text().replace(*edit))
    code = main([str(bag), "--out", str(tmp_path / "report"), "--preset", "tiny-eva02", "--no-progress",
                 "--montage-rows", "0"])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["partial"] is True
