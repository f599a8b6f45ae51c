"""mfuser-replay: outputs equal the node pipeline's, metrics, ground truth sources, damaged bags, Ctrl-C.

Bags are written into tmp_path with rosbags' real Writer (mcap and sqlite3); no binary fixtures.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from mfuser_model.classes import CITYSCAPES_LABEL_TO_TRAIN
from mfuser_model.errors import MFuserError
from mfuser_model.metrics import ConfusionMatrix
from mfuser_ros.node.config import NodeConfig
from mfuser_ros.node.pipeline import Wanted
from mfuser_ros.replay.bagio import BagInput, BagReadError
from mfuser_ros.replay.cli import main
from mfuser_ros.replay.runner import ReplayError, ReplayOptions, run_replay

rosbag2 = pytest.importorskip("rosbags.rosbag2", reason="rosbags is part of the [ros] extra")
highlevel = pytest.importorskip("rosbags.highlevel")

T0 = 1_700_000_000_000_000_000
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (height + width)], -1) + rng.normal(0, 0.03, (height, width, 3))
    return np.clip(base * 255, 0, 255).astype(np.uint8)


def gt_labels(height: int, width: int, seed: int) -> np.ndarray:
    """Train-id ground truth with a few ignore pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 19, size=(height, width), dtype=np.uint8)
    labels[:2] = 255
    return labels


def write_bag(path: Path, msgs, typestore, storage: str = "mcap", frames: int = 3, gt: bool = True,
              padding: int = 0) -> Path:
    """Two cameras: /front rgb8 64x48 (+ ground truth topic) and /side JPEG 80x40; stamps 10 Hz.

    ``padding`` adds that many bytes of an unrelated image topic after every frame (forces several mcap chunks).
    """
    plugin = rosbag2.StoragePlugin.MCAP if storage == "mcap" else rosbag2.StoragePlugin.SQLITE3
    with rosbag2.Writer(path, version=9, storage_plugin=plugin) as w:
        front = w.add_connection("/front/image_raw", IMAGE, typestore=typestore)
        side = w.add_connection("/side/image_raw/compressed", COMPRESSED, typestore=typestore)
        label = w.add_connection("/front/ground_truth/labels", IMAGE, typestore=typestore) if gt else None
        pad = w.add_connection("/padding/blob", IMAGE, typestore=typestore) if padding else None
        for i in range(frames):
            t = T0 + i * 100_000_000
            header = msgs.header(sec=t // 10**9, nanosec=t % 10**9, frame_id="front")
            w.write(front, t, typestore.serialize_cdr(msgs.image(scene(48, 64, seed=i), "rgb8", header), IMAGE))
            if gt:
                w.write(label, t + 1, typestore.serialize_cdr(msgs.image(gt_labels(48, 64, i), "mono8", header),
                                                              IMAGE))
            side_header = msgs.header(sec=(t + 5) // 10**9, nanosec=(t + 5) % 10**9, frame_id="side")
            w.write(side, t + 5, typestore.serialize_cdr(msgs.compressed(scene(40, 80, seed=100 + i), "jpeg",
                                                                         side_header), COMPRESSED))
            if padding:
                blob = np.full((1, padding), i, dtype=np.uint8)
                w.write(pad, t + 7, typestore.serialize_cdr(msgs.image(blob, "mono8", header), IMAGE))
    return path


def read_bag(path: Path) -> dict[str, list]:
    """topic -> [(timestamp, message)] of every message in a bag."""
    out: dict[str, list] = {}
    with highlevel.AnyReader([path]) as reader:
        for connection, timestamp, raw in reader.messages():
            out.setdefault(connection.topic, []).append((timestamp, reader.deserialize(raw, connection.msgtype)))
    return out


def options(bag: Path, out: Path, **kw) -> ReplayOptions:
    return ReplayOptions(bag=bag, out=out, node=NodeConfig(preset="tiny-eva02", warmup=False), progress=False, **kw)


def stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_replay_outputs_equal_the_node_pipeline_and_metrics_match(tmp_path, msgs, typestore, tiny_model, storage):
    bag = write_bag(tmp_path / "drive", msgs, typestore, storage=storage, frames=2)
    result = run_replay(options(bag, tmp_path / "report", storage=storage), loaded=tiny_model)
    assert result.exit_code == 0
    assert (result.output_bag / "metadata.yaml").is_file()
    inputs, outputs = read_bag(bag), read_bag(result.output_bag)
    for topic in ("/front/image_raw", "/side/image_raw/compressed", "/front/ground_truth/labels"):
        assert [t for t, _ in outputs[topic]] == [t for t, _ in inputs[topic]]  # inputs copied unchanged
    cm = ConfusionMatrix(19)
    for camera, topic in (("/front", "/front/image_raw"), ("/side", "/side/image_raw/compressed")):
        labels = outputs[f"{camera}/mfuser/labels"]
        colors = outputs[f"{camera}/mfuser/color"]
        assert len(labels) == len(colors) == len(inputs[topic]) == 2
        for (ts_in, msg_in), (ts_out, lab), (_, col) in zip(inputs[topic], labels, colors, strict=True):
            expected = tiny_model.pipeline.process(msg_in, Wanted(color=True))
            assert ts_out == ts_in
            assert stamp(lab) == stamp(col) == stamp(msg_in)
            assert lab.header.frame_id == col.header.frame_id == msg_in.header.frame_id
            assert lab.encoding == "mono8" and col.encoding == "bgr8"
            np.testing.assert_array_equal(lab.data.reshape(lab.height, lab.width), expected.labels.data)
            np.testing.assert_array_equal(col.data.reshape(col.height, col.width, 3), expected.color.data)
            if camera == "/front":
                gt = next(m for t, m in inputs["/front/ground_truth/labels"] if stamp(m) == stamp(msg_in))
                cm.update(expected.labels.data, gt.data.reshape(gt.height, gt.width))
    s = result.summary
    assert s["partial"] is False
    assert s["frames"] == {"read": 4, "processed": 4, "dropped": 0, "failed": 0, "unfinished": 0, "evaluated": 2,
                           "undecodable": 0, "gt_failed": 0}
    assert s["cameras"]["/front"]["evaluated"] == 2 and s["cameras"]["/side"]["metrics"] is None
    assert s["overall"]["metrics"]["mIoU"] == pytest.approx(cm.miou())
    assert s["overall"]["metrics"]["aAcc"] == pytest.approx(cm.pixel_accuracy())
    for key in ("p50", "p95", "p99"):
        assert s["overall"]["latency_ms"][key] > 0
    report = result.report_md.read_text()
    assert "| road" in report and "PARTIAL" not in report
    assert result.montage_png is not None and cv2.imread(str(result.montage_png)) is not None


def test_ground_truth_folder_in_labelids_keyed_by_index(tmp_path, msgs, typestore, tiny_model):
    bag = write_bag(tmp_path / "drive.mcap", msgs, typestore, gt=False)
    bag = next(bag.glob("*.mcap"))  # a bare .mcap file is a valid input too
    to_label = {t: k for k, t in CITYSCAPES_LABEL_TO_TRAIN.items()} | {255: 0}
    gt_dir = tmp_path / "gt"
    (gt_dir / "side").mkdir(parents=True)
    train = [gt_labels(40, 80, seed=7 + i) for i in range(3)]
    for i, labels in enumerate(train):
        cv2.imwrite(str(gt_dir / "side" / f"{i:06d}.png"), np.vectorize(to_label.get)(labels).astype(np.uint8))
    result = run_replay(options(bag, tmp_path / "report", gt_dir=gt_dir, gt_key="index", gt_format="labelids"),
                        loaded=tiny_model)
    cm = ConfusionMatrix(19)
    side_in = read_bag(bag)["/side/image_raw/compressed"]
    for (_, msg), labels in zip(side_in, train, strict=True):
        cm.update(tiny_model.pipeline.process(msg).labels.data, labels)
    side = result.summary["cameras"]["/side"]
    assert side["evaluated"] == 3 and side["gt_unmatched"] == 0
    assert side["metrics"]["mIoU"] == pytest.approx(cm.miou())
    assert result.summary["cameras"]["/front"]["gt_unmatched"] == 3  # no folder for /front


def test_trainid_ground_truth_with_labelids_values_is_a_clear_error(tmp_path, msgs, typestore, tiny_model):
    bag = write_bag(tmp_path / "drive", msgs, typestore, gt=False)
    gt_dir = tmp_path / "gt"
    (gt_dir / "front").mkdir(parents=True)
    cv2.imwrite(str(gt_dir / "front" / f"{T0}.png"), np.full((48, 64), 26, np.uint8))  # labelId 26 = car
    with pytest.raises(Exception, match=r"000\.png: ground truth holds ids \[26\].*--gt-format labelids"):
        run_replay(options(bag, tmp_path / "report", gt_dir=gt_dir), loaded=tiny_model)


def test_truncated_mcap_keeps_the_frames_before_the_cut_and_names_the_byte(tmp_path, msgs, typestore, tiny_model):
    # ~0.6 MB of other data per frame: rosbags closes a chunk every MiB, so the file has several chunks.
    bag = write_bag(tmp_path / "drive", msgs, typestore, frames=6, padding=600_000)
    mcap = next(bag.glob("*.mcap"))
    os.truncate(mcap, int(mcap.stat().st_size * 0.7))
    result = run_replay(options(bag, tmp_path / "report", topics=("/front/image_raw",)), loaded=tiny_model)
    s = result.summary
    assert result.exit_code == 2 and s["partial"] is True
    assert str(mcap) in s["partial_reason"] and "at byte" in s["partial_reason"]
    assert 1 <= s["frames"]["processed"] < 6
    assert s["frames"]["evaluated"] == s["frames"]["processed"]
    out = read_bag(result.output_bag)  # the output bag is complete and readable
    assert len(out["/front/mfuser/labels"]) == s["frames"]["processed"]
    assert "PARTIAL" in result.report_md.read_text()


def test_truncated_db3_keeps_the_frames_before_the_cut_and_names_the_row(tmp_path, msgs, typestore, tiny_model):
    bag = write_bag(tmp_path / "drive", msgs, typestore, storage="sqlite3", frames=6)
    db3 = next(bag.glob("*.db3"))
    os.truncate(db3, int(db3.stat().st_size * 0.6))
    result = run_replay(options(bag, tmp_path / "report", storage="sqlite3"), loaded=tiny_model)
    s = result.summary
    assert result.exit_code == 2 and s["partial"] is True
    assert str(db3) in s["partial_reason"] and "row" in s["partial_reason"]
    assert 1 <= s["frames"]["processed"] < 12
    assert len(read_bag(result.output_bag)["/front/mfuser/labels"]) == s["cameras"]["/front"]["frames_out"]


def test_bag_without_image_topics_is_a_clear_error(tmp_path, typestore, capsys):
    bag = tmp_path / "chatter"
    with rosbag2.Writer(bag, version=9, storage_plugin=rosbag2.StoragePlugin.MCAP) as w:
        conn = w.add_connection("/chatter", "std_msgs/msg/String", typestore=typestore)
        w.write(conn, T0, typestore.serialize_cdr(typestore.types["std_msgs/msg/String"](data="hi"),
                                                  "std_msgs/msg/String"))
    assert main([str(bag), "--out", str(tmp_path / "report"), "--preset", "tiny-eva02", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{bag}: no camera topics" in err and "/chatter (std_msgs/msg/String)" in err


def test_ctrl_c_leaves_a_valid_bag_and_a_partial_report(tmp_path, msgs, typestore, tiny_model):
    bag = write_bag(tmp_path / "drive", msgs, typestore, frames=4)

    def interrupt(frames_read: int) -> None:
        if frames_read == 3:
            raise KeyboardInterrupt

    result = run_replay(options(bag, tmp_path / "report"), loaded=tiny_model, on_frame=interrupt)
    s = result.summary
    assert result.exit_code == 130 and s["partial"] is True and "interrupted" in s["partial_reason"]
    out = read_bag(result.output_bag)
    labels = out["/front/mfuser/labels"] + out["/side/mfuser/labels"]
    assert len(labels) == s["frames"]["processed"] >= 1
    assert s["frames"]["read"] == 3
    f = s["frames"]
    assert f["read"] == f["processed"] + f["failed"] + f["dropped"] + f["unfinished"]
    assert "PARTIAL" in result.report_md.read_text()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])  # sqlite3: written from the worker thread too
def test_realtime_mode_outputs_are_the_pipeline_outputs_of_the_frames_it_kept(tmp_path, msgs, typestore, tiny_model,
                                                                              storage):
    bag = write_bag(tmp_path / "drive", msgs, typestore, frames=3)
    result = run_replay(options(bag, tmp_path / "report", realtime=True, rate=4.0, outputs=(), storage=storage),
                        loaded=tiny_model)
    s = result.summary
    assert result.exit_code == 0
    assert s["frames"]["processed"] + s["frames"]["dropped"] + s["frames"]["failed"] == s["frames"]["read"] == 6
    inputs, outputs = read_bag(bag), read_bag(result.output_bag)
    by_stamp = {stamp(m): m for topic in ("/front/image_raw", "/side/image_raw/compressed") for _, m in inputs[topic]}
    kept = outputs.get("/front/mfuser/labels", []) + outputs.get("/side/mfuser/labels", [])
    assert len(kept) == s["frames"]["processed"] >= 1
    assert "/front/mfuser/color" not in outputs
    for _, lab in kept:
        expected = tiny_model.pipeline.process(by_stamp[stamp(lab)]).labels.data
        np.testing.assert_array_equal(lab.data.reshape(lab.height, lab.width), expected)


def test_output_bag_refuses_to_overwrite(tmp_path, msgs, typestore, tiny_model):
    bag = write_bag(tmp_path / "drive", msgs, typestore, frames=1)
    run_replay(options(bag, tmp_path / "report", montage_rows=0), loaded=tiny_model)
    with pytest.raises(ReplayError, match=r"drive_mfuser: output bag exists already"):
        run_replay(options(bag, tmp_path / "report"), loaded=tiny_model)


def test_unknown_topic_is_named(tmp_path, msgs, typestore, tiny_model):
    bag = write_bag(tmp_path / "drive", msgs, typestore, frames=1)
    with pytest.raises(ReplayError, match=r"topic '/rear/image_raw' is not in the bag"):
        run_replay(replace(options(bag, tmp_path / "report"), topics=("/rear/image_raw",)), loaded=tiny_model)


def test_ros1_bag_is_replayed_into_a_ros2_output_bag(tmp_path, tiny_model):
    rosbag1 = pytest.importorskip("rosbags.rosbag1")
    from rosbags.typesys import Stores, get_typestore

    ts1 = get_typestore(Stores.ROS1_NOETIC)
    Image, Header, Time = (ts1.types[n] for n in (IMAGE, "std_msgs/msg/Header", "builtin_interfaces/msg/Time"))
    bag = tmp_path / "drive.bag"
    with rosbag1.Writer(bag) as w:
        conn = w.add_connection("/front/image_raw", IMAGE, typestore=ts1)
        for i in range(2):
            pixels = scene(48, 64, seed=i)
            msg = Image(header=Header(seq=i, stamp=Time(sec=100 + i, nanosec=5), frame_id="front"), height=48,
                        width=64, encoding="rgb8", is_bigendian=0, step=192, data=pixels.reshape(-1))
            w.write(conn, (100 + i) * 10**9 + 5, ts1.serialize_ros1(msg, IMAGE))
    result = run_replay(options(bag, tmp_path / "report", outputs=()), loaded=tiny_model)
    assert result.exit_code == 0
    out = read_bag(result.output_bag)
    assert (result.output_bag / "metadata.yaml").is_file()
    assert len(out["/front/image_raw"]) == len(out["/front/mfuser/labels"]) == 2
    for (_, copied), (_, lab), i in zip(out["/front/image_raw"], out["/front/mfuser/labels"], range(2), strict=True):
        np.testing.assert_array_equal(copied.data.reshape(48, 64, 3), scene(48, 64, seed=i))
        assert stamp(lab) == (100 + i) * 10**9 + 5 and lab.header.frame_id == "front"
        expected = tiny_model.pipeline.process(copied).labels.data
        np.testing.assert_array_equal(lab.data.reshape(lab.height, lab.width), expected)


def test_corrupt_db3_stops_at_the_damage_naming_file_and_message(tmp_path, msgs, typestore):
    bag = write_bag(tmp_path / "drive", msgs, typestore, storage="sqlite3", frames=6)
    db3 = next(bag.glob("*.db3"))
    size = db3.stat().st_size
    with db3.open("r+b") as f:  # overwrite pages in the middle, keep the file's length
        f.seek(size // 2)
        f.write(b"\xff" * 8192)
    read = []

    def read_all(reader: BagInput) -> None:
        for _, message in reader.messages(["/front/image_raw"]):
            read.append(message)

    with BagInput(bag) as reader, pytest.raises(BagReadError, match=r"drive: cannot read after message \d+"):
        read_all(reader)
    assert 1 <= len(read) < 6


def test_flat_ground_truth_folder_with_several_cameras_is_refused(tmp_path, msgs, typestore, tiny_model):
    # Before: every camera was scored against the same flat folder, silently.
    bag = write_bag(tmp_path / "drive", msgs, typestore, gt=False, frames=1)
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    cv2.imwrite(str(gt_dir / "000000.png"), gt_labels(48, 64, 0))
    with pytest.raises(MFuserError, match=r"2 cameras are replayed \(/front, /side\).*front/, side/"):
        run_replay(options(bag, tmp_path / "report", gt_dir=gt_dir, gt_key="index"), loaded=tiny_model)
    assert not (tmp_path / "report" / "metrics.json").exists()


def test_flat_ground_truth_of_one_camera_report_states_what_was_measured(tmp_path, msgs, typestore, tiny_model,
                                                                         capsys):
    bag = write_bag(tmp_path / "drive", msgs, typestore, gt=False, frames=2)
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    train = [gt_labels(48, 64, seed=20 + i) for i in range(2)]
    for i, labels in enumerate(train):
        cv2.imwrite(str(gt_dir / f"{i:06d}.png"), labels)
    opts = replace(options(bag, tmp_path / "report", gt_dir=gt_dir, gt_key="index", miou_rule="bdd100k"),
                   topics=("/front/image_raw",), progress=True)
    result = run_replay(opts, loaded=tiny_model)
    cm = ConfusionMatrix(19)
    for (_, msg), labels in zip(read_bag(bag)["/front/image_raw"], train, strict=True):
        cm.update(tiny_model.pipeline.process(msg).labels.data, labels)
    s = result.summary
    m = s["cameras"]["/front"]["metrics"]
    assert s["cameras"]["/front"]["evaluated"] == 2 and s["gt"]["cameras"] == {"/front": f"{gt_dir}/<index>.png"}
    assert m["mIoU"] == pytest.approx(cm.miou("bdd100k")) and m["miou_rule"] == "bdd100k"
    assert m["mAcc"] == pytest.approx(cm.mean_class_accuracy()) and m["Acc"]["road"] is not None
    assert m["confusion_matrix"] == cm.counts_array().tolist()
    frame0 = ConfusionMatrix(19)
    frame0.update(tiny_model.pipeline.process(read_bag(bag)["/front/image_raw"][0][1]).labels.data, train[0])
    assert result.frame_log.records[0].miou == pytest.approx(frame0.miou("bdd100k"))  # frames.csv: the same rule
    assert s["model"]["decoder_backend"] == "torch" and s["model"]["tensors_sha256"] is None
    report = result.report_md.read_text()
    assert "- decoder backend: torch" in report and "- mIoU rule: BDD100K toolkit rule" in report
    assert f"- ground truth: /front: {gt_dir}/<index>.png (train ids as stored)" in report
    assert "preset `tiny-eva02` with random weights" in report and "- inference: whole image" in report
    all_row = next(line for line in report.splitlines() if line.startswith("| **all** |"))
    assert f"| {100 * m['mIoU']:.2f}% | {100 * m['mAcc']:.2f}% | {100 * m['aAcc']:.2f}% |" in all_row
    # The montage has the colour legend under its rows (header 20 + one row per sampled frame + legend).
    montage = cv2.imread(str(result.montage_png))
    assert montage.shape[0] > 20 + 2 * (48 * 256 // 64 + 2)
    # stderr is no terminal here: progress comes as log lines, the last one with the total.
    err = capsys.readouterr().err
    assert "mfuser-replay: 1/2 frames (50.0%)" in err and "mfuser-replay: 2/2 frames (100.0%)" in err


def test_clock_skew_is_judged_against_the_recording_time_not_the_wall_clock(tmp_path, msgs, typestore, tiny_model,
                                                                            capsys):
    # Recorded in 2023 and replayed now: not skew. A camera that stamped sec=0 on the vehicle: skew, as the node saw.
    with rosbag2.Writer(tmp_path / "old_drive", version=9) as w:
        front = w.add_connection("/front/image_raw", IMAGE, typestore=typestore)
        side = w.add_connection("/side/image_raw", IMAGE, typestore=typestore)
        for i in range(2):
            t = T0 + i * 100_000_000
            header = msgs.header(sec=t // 10**9, nanosec=t % 10**9, frame_id="front")
            w.write(front, t, typestore.serialize_cdr(msgs.image(scene(48, 64, seed=i), "rgb8", header), IMAGE))
            unsynced = msgs.header(sec=0, nanosec=i, frame_id="side")
            w.write(side, t + 5, typestore.serialize_cdr(msgs.image(scene(48, 64, seed=9), "rgb8", unsynced), IMAGE))
    result = run_replay(options(tmp_path / "old_drive", tmp_path / "report"), loaded=tiny_model)
    assert result.exit_code == 0 and result.summary["frames"]["processed"] == 4
    err = capsys.readouterr().err
    assert "camera '/side': header stamp is 1.7e+09 s behind" in err
    assert "camera '/front'" not in err
