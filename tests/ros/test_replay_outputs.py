"""mfuser-replay writes what downstream consumers read: CameraInfo beside the labels, compressed outputs, legend."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from mfuser_model.classes import CITYSCAPES_PALETTE, palette_to_hex
from mfuser_ros.node.config import NodeConfig
from mfuser_ros.node.pipeline import SegmentationPipeline
from mfuser_ros.replay.runner import ReplayOptions, run_replay

rosbag2 = pytest.importorskip("rosbags.rosbag2", reason="rosbags is part of the [ros] extra")
highlevel = pytest.importorskip("rosbags.highlevel")

T0 = 1_700_000_000_000_000_000
IMAGE, INFO = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"
K = np.array([60.0, 0.0, 32.0, 0.0, 61.0, 24.0, 0.0, 0.0, 1.0])


def camera_info(typestore, header):
    types = typestore.types
    roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types[INFO](header=header, height=48, width=64, distortion_model="plumb_bob", d=np.zeros(5), k=K,
                       r=np.eye(3).ravel(), p=np.insert(K.reshape(3, 3), 3, 0.0, axis=1).ravel(), binning_x=0,
                       binning_y=0, roi=roi)


def write_bag(path, msgs, typestore, scene, frames: int = 3):
    """/front rgb8 64x48 at 10 Hz; its CameraInfo follows each image, except the last frame's (never sent)."""
    with rosbag2.Writer(path, version=9, storage_plugin=rosbag2.StoragePlugin.MCAP) as w:
        image = w.add_connection("/front/image_raw", IMAGE, typestore=typestore)
        info = w.add_connection("/front/camera_info", INFO, typestore=typestore)
        for i in range(frames):
            t = T0 + i * 100_000_000
            header = msgs.header(sec=t // 10**9, nanosec=t % 10**9, frame_id="front_optical")
            w.write(image, t, typestore.serialize_cdr(msgs.image(scene(48, 64, seed=i), "rgb8", header), IMAGE))
            if i < frames - 1:
                w.write(info, t + 2, typestore.serialize_cdr(camera_info(typestore, header), INFO))
    return path


def read_bag(path):
    out = {}
    with highlevel.AnyReader([path]) as reader:
        for connection, timestamp, raw in reader.messages():
            out.setdefault(connection.topic, []).append((timestamp, reader.deserialize(raw, connection.msgtype)))
    return out


def stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def test_replay_writes_scaled_camera_info_compressed_outputs_and_the_legend(tmp_path, msgs, typestore, scene,
                                                                           tiny_model):
    bag = write_bag(tmp_path / "drive", msgs, typestore, scene)
    node = NodeConfig(preset="tiny-eva02", warmup=False, output_width=32, output_height=24)
    pipeline = SegmentationPipeline.from_config(node, tiny_model.pipeline.segmenter, palette=tiny_model.palette)
    loaded = replace(tiny_model, pipeline=pipeline)  # the session's model, at this run's output size
    options = ReplayOptions(bag=bag, out=tmp_path / "report", node=node, progress=False, montage_rows=0,
                            outputs=("labels/compressed", "color/compressed"))
    result = run_replay(options, loaded=loaded)
    assert result.exit_code == 0
    out = read_bag(result.output_bag)
    assert len(out["/front/camera_info"]) == 2  # the input's CameraInfo, copied
    labels = {stamp(m): (t, m) for t, m in out["/front/mfuser/labels"]}
    infos = out["/front/mfuser/camera_info"]
    assert len(labels) == 3 and len(infos) == 2  # the last frame's CameraInfo never came
    for t, info in infos:
        label_t, label = labels[stamp(info)]
        assert t == label_t and info.header.frame_id == label.header.frame_id == "front_optical"
        assert (info.height, info.width) == (label.height, label.width) == (24, 32)
        np.testing.assert_allclose(info.k, [30.0, 0.0, 16.0, 0.0, 30.5, 12.0, 0.0, 0.0, 1.0])
    pngs = out["/front/mfuser/labels/compressed"]
    assert [p.format for _, p in pngs] == ["mono8; png compressed "] * 3
    for _, png in pngs:
        decoded = cv2.imdecode(np.asarray(png.data, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(decoded, np.asarray(labels[stamp(png)][1].data).reshape(24, 32))
    assert [j.format for _, j in out["/front/mfuser/color/compressed"]] == ["bgr8; jpeg compressed bgr8"] * 3
    assert "/front/mfuser/color" not in out  # only what --outputs asked for
    summary = json.loads(result.metrics_json.read_text())
    assert summary["cameras"]["/front"]["camera_info"] == {"topic": "/front/camera_info", "received": 2,
                                                            "paired": 2, "unmatched": 1, "malformed": 0}
    assert summary["palette"] == list(palette_to_hex(CITYSCAPES_PALETTE))
    # The report states how the frames were segmented: 64x48 frames fit the 2048x1024 box, so one whole pass.
    inference = summary["cameras"]["/front"]["inference"]
    assert inference["inputs"] == [{"input": [48, 64], "network": [48, 64], "windows": 1, "images": 3}]
    assert inference["mode"] == "whole" and inference["input_box"] == [2048, 1024]
    assert summary["model"]["inference"] == inference
    line = "- inference: whole image; network input 48x64 (h x w): 1 window, 3 images"
    assert line in result.report_md.read_text()


def test_ros1_camera_info_is_copied_and_paired(tmp_path, scene, tiny_model):
    rosbag1 = pytest.importorskip("rosbags.rosbag1")
    from rosbags.typesys import Stores, get_typestore

    ts1 = get_typestore(Stores.ROS1_NOETIC)
    types = ts1.types
    assert "K" in types[INFO].__dataclass_fields__  # ROS 1 names the matrices D, K, R, P
    bag = tmp_path / "drive.bag"
    with rosbag1.Writer(bag) as w:
        image_conn = w.add_connection("/front/image_raw", IMAGE, typestore=ts1)
        info_conn = w.add_connection("/front/camera_info", INFO, typestore=ts1)
        header = types["std_msgs/msg/Header"](seq=0, stamp=types["builtin_interfaces/msg/Time"](sec=100, nanosec=5),
                                              frame_id="front")
        image = types[IMAGE](header=header, height=48, width=64, encoding="rgb8", is_bigendian=0, step=192,
                             data=scene(48, 64).reshape(-1))
        roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        info = types[INFO](header=header, height=48, width=64, distortion_model="plumb_bob", D=np.zeros(5), K=K,
                           R=np.eye(3).ravel(), P=np.zeros(12), binning_x=0, binning_y=0, roi=roi)
        w.write(image_conn, 100 * 10**9 + 5, ts1.serialize_ros1(image, IMAGE))
        w.write(info_conn, 100 * 10**9 + 6, ts1.serialize_ros1(info, INFO))
    options = ReplayOptions(bag=bag, out=tmp_path / "report", node=NodeConfig(preset="tiny-eva02", warmup=False),
                            progress=False, montage_rows=0, outputs=())
    assert run_replay(options, loaded=tiny_model).exit_code == 0
    out = read_bag(tmp_path / "report" / "drive_mfuser")
    ((_, copied),) = out["/front/camera_info"]
    ((_, paired),) = out["/front/mfuser/camera_info"]
    np.testing.assert_array_equal(copied.k, K)
    np.testing.assert_array_equal(paired.k, K)  # same size: unchanged
    assert stamp(paired) == 100 * 10**9 + 5 and paired.header.frame_id == "front"


def test_the_montage_legend_and_metrics_take_the_color_palette_parameter(tmp_path, msgs, typestore, scene):
    from mfuser_model.classes import CITYSCAPES_CLASSES, palette_from_hex
    from mfuser_model.report import legend_image

    bag = write_bag(tmp_path / "drive", msgs, typestore, scene, frames=2)
    custom = tuple(f"#{10 * i:02X}{255 - 10 * i:02X}{7 * i:02X}" for i in range(19))
    node = NodeConfig(preset="tiny-eva02", warmup=False, color_palette=custom)  # loaded by the replay itself
    result = run_replay(ReplayOptions(bag=bag, out=tmp_path / "report", node=node, progress=False, montage_rows=2))
    assert json.loads(result.metrics_json.read_text())["palette"] == list(custom)
    montage = cv2.cvtColor(cv2.imread(str(result.montage_png)), cv2.COLOR_BGR2RGB)
    width = montage.shape[1]
    legend = legend_image(CITYSCAPES_CLASSES, palette_from_hex(custom), width)[:, :width]
    np.testing.assert_array_equal(montage[-legend.shape[0]:, :legend.shape[1]], legend)
