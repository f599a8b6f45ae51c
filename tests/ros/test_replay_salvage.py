"""Damaged and degenerate inputs: what the replay still keeps, and the clear errors where nothing can be kept."""

from __future__ import annotations

import json
import os

import pytest
from test_replay import IMAGE, T0, gt_labels, options, write_bag

from mfuser_ros.replay.bagio import BagInput, BagReadError
from mfuser_ros.replay.cli import main

rosbag2 = pytest.importorskip("rosbags.rosbag2", reason="rosbags is part of the [ros] extra")
highlevel = pytest.importorskip("rosbags.highlevel")
from mfuser_ros.replay.runner import ReplayError, run_replay  # noqa: E402

CLI = ["--preset", "tiny-eva02", "--no-progress", "--montage-rows", "0"]


def test_mcap_cut_inside_its_only_chunk_keeps_the_complete_messages(tmp_path, msgs, typestore, tiny_model):
    bag = write_bag(tmp_path / "drive", msgs, typestore, frames=3)  # one uncompressed chunk
    mcap = next(bag.glob("*.mcap"))
    with highlevel.AnyReader([bag]) as reader:
        original = {bytes(raw) for _, _, raw in reader.messages()}
    os.truncate(mcap, mcap.stat().st_size * 2 // 3)
    kept = []
    with BagInput(bag) as reader:
        assert reader.damaged and reader.topics["/front/image_raw"].count >= 1
        with pytest.raises(BagReadError, match=r"drive\.mcap: record 0x06 at byte \d+ declares \d+ bytes"):
            kept.extend(m for _, m in reader.messages(["/front/image_raw", "/side/image_raw/compressed"]))
    assert 2 <= len(kept) < 6
    assert all(message.raw in original for message in kept)  # each one whole, byte for byte
    result = run_replay(options(bag, tmp_path / "report"), loaded=tiny_model)
    assert result.exit_code == 2 and result.summary["partial"] is True
    assert result.summary["frames"]["processed"] == len(kept)


def test_mcap_of_only_its_magic_bytes_is_a_clear_error(tmp_path, capsys):
    bag = tmp_path / "empty.mcap"
    bag.write_bytes(b"\x89MCAP0\r\n")
    assert main([str(bag), "--out", str(tmp_path / "report"), *CLI]) == 1
    err = capsys.readouterr().err
    assert f"{bag}: file ends at byte 8 without the MCAP footer" in err
    assert "Traceback" not in err and "TypeError" not in err


@pytest.mark.parametrize("damage", ["values", "framing"])
def test_one_corrupt_ground_truth_message_is_counted_and_the_replay_goes_on(tmp_path, msgs, typestore, capsys,
                                                                            damage):
    bag = write_bag(tmp_path / "drive", msgs, typestore, frames=3)
    mcap = next(bag.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    header = msgs.header(sec=(T0 + 100_000_000) // 10**9, nanosec=(T0 + 100_000_000) % 10**9, frame_id="front")
    raw = typestore.serialize_cdr(msgs.image(gt_labels(48, 64, 1), "mono8", header), IMAGE)
    at = data.find(raw)  # the second frame's ground truth, inside the chunk
    assert at > 0
    if damage == "values":  # bit flips in the pixels: ids that are no train ids
        for k in range(1, 200, 7):
            data[at + len(raw) - k] |= 0x80
    else:  # a bit flip in frame_id's length: the message no longer deserializes
        data[at + 15] ^= 0x40
    mcap.write_bytes(bytes(data))
    out = tmp_path / "report"
    assert main([str(bag), "--out", str(out), *CLI]) == 0
    err = capsys.readouterr().err
    assert "/front/ground_truth/labels" in err and "skipped" in err
    assert "skipped: 0 camera and 1 ground-truth messages that could not be used" in err
    summary = json.loads((out / "metrics.json").read_text())
    front = summary["cameras"]["/front"]
    assert front["gt_failed"] == 1 and front["evaluated"] == 2 and front["frames_out"] == 3
    assert summary["frames"]["gt_failed"] == 1
    assert "/front/ground_truth/labels" in summary["unusable_messages"]
    assert (out / "report.md").is_file()


def write_cameras(path, msgs, typestore, frames_side: int):
    """/front with 2 frames, /side declared with ``frames_side`` frames."""
    with rosbag2.Writer(path, version=9, storage_plugin=rosbag2.StoragePlugin.MCAP) as w:
        front = w.add_connection("/front/image_raw", IMAGE, typestore=typestore)
        side = w.add_connection("/side/image_raw", IMAGE, typestore=typestore)
        for i in range(2):
            header = msgs.header(sec=100 + i, nanosec=0, frame_id="front")
            image = msgs.image(gt_labels(24, 32, i).repeat(3).reshape(24, 32, 3), "rgb8", header)
            w.write(front, (100 + i) * 10**9, typestore.serialize_cdr(image, IMAGE))
            if i < frames_side:
                w.write(side, (100 + i) * 10**9 + 1, typestore.serialize_cdr(image, IMAGE))
    return path


def test_image_topic_without_messages_is_refused_by_name(tmp_path, msgs, typestore, capsys):
    bag = write_cameras(tmp_path / "drive", msgs, typestore, frames_side=0)
    assert main([str(bag), "--out", str(tmp_path / "a"), "--topics", "/side/image_raw", *CLI]) == 1
    assert "camera topic(s) with 0 messages: /side/image_raw" in capsys.readouterr().err
    # Found, not asked for: left out and said so; the camera with frames is replayed.
    assert main([str(bag), "--out", str(tmp_path / "b"), *CLI]) == 0
    assert "/side/image_raw recorded no messages; not replayed" in capsys.readouterr().err
    summary = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert list(summary["cameras"]) == ["/front"] and summary["frames"]["processed"] == 2


def test_bag_whose_only_camera_has_no_messages_is_refused(tmp_path, msgs, typestore):
    bag = tmp_path / "drive"
    with rosbag2.Writer(bag, version=9, storage_plugin=rosbag2.StoragePlugin.MCAP) as w:
        w.add_connection("/front/image_raw", IMAGE, typestore=typestore)
    with pytest.raises(ReplayError, match=r"drive: camera topic\(s\) with 0 messages: /front/image_raw"):
        run_replay(options(bag, tmp_path / "report"))


def test_empty_config_file_is_refused_naming_it(tmp_path, msgs, typestore, capsys):
    bag = write_cameras(tmp_path / "drive", msgs, typestore, frames_side=2)
    config = tmp_path / "node.yaml"
    config.write_text("")
    assert main([str(bag), "--out", str(tmp_path / "report"), "--config", str(config), *CLI]) == 1
    assert f"{config}: the parameter file is empty" in capsys.readouterr().err
