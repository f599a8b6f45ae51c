"""mfuser-make-demo-bag: the synthetic drive replay's demo runs on."""

from __future__ import annotations

import numpy as np
import pytest

from mfuser_model.classes import CITYSCAPES_LABEL_TO_TRAIN
from mfuser_model.synthetic.scenes import render_scene
from mfuser_ros.node.conversions import message_to_rgb
from mfuser_ros.replay.bagio import BagInput
from mfuser_ros.replay.demo_bag import DemoCamera, main, make_demo_bag
from mfuser_ros.replay.runner import find_camera_topics


@pytest.mark.parametrize(("storage", "gt_format"), [("mcap", "trainids"), ("sqlite3", "labelids")])
def test_demo_bag_holds_each_camera_with_its_style_and_exact_ground_truth(tmp_path, storage, gt_format):
    cameras = [DemoCamera("cam_game", "game"), DemoCamera("cam_night", "night", compressed=True)]
    bag = make_demo_bag(tmp_path / "drive", cameras, frames=2, size=(64, 32), seed=5, storage=storage,
                        gt_format=gt_format)
    with BagInput(bag) as reader:
        topics = reader.topics
        assert find_camera_topics(topics) == ["/cam_game/image_raw", "/cam_night/image_raw/compressed"]
        assert {t: i.count for t, i in topics.items()} == {
            "/cam_game/image_raw": 2, "/cam_game/ground_truth/labels": 2,
            "/cam_night/image_raw/compressed": 2, "/cam_night/ground_truth/labels": 2}
        messages = list(reader.messages(list(topics)))
    to_label = np.zeros(256, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        to_label[train_id] = label_id
    for k, cam in enumerate(cameras):
        images = [m.msg for _, m in messages if m.topic.startswith(f"/{cam.name}/image_raw")]
        gts = [m.msg for _, m in messages if m.topic == f"/{cam.name}/ground_truth/labels"]
        for i, (image, gt) in enumerate(zip(images, gts, strict=True)):
            rgb, labels = render_scene(np.random.default_rng(5 + 1000 * k + i), 32, 64, style=cam.style)
            assert image.header.stamp == gt.header.stamp
            expected = labels if gt_format == "trainids" else np.where(labels == 255, 0, to_label[labels])
            np.testing.assert_array_equal(gt.data.reshape(32, 64), expected)
            decoded = message_to_rgb(image)
            if cam.compressed:  # JPEG: close, not exact
                assert np.abs(decoded.astype(int) - rgb).mean() < 8
            else:
                np.testing.assert_array_equal(decoded, rgb)


def test_cli_rejects_a_malformed_camera_spec(tmp_path, capsys):
    assert main([str(tmp_path / "drive"), "--camera", "front"]) == 1
    assert "--camera 'front': expected NAME:STYLE" in capsys.readouterr().err
