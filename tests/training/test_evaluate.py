"""mfuser-eval's per-target report states the protocol: mode, window, resize box, network size, windows."""

from __future__ import annotations

import json

import torch

from mfuser_model.checkpoint import build_model
from training.config import DatasetSpec, EvalConfig
from training.evaluate import evaluate_targets
from training.synthetic import write_cityscapes


def test_report_states_mode_sizes_and_windows_per_image(tmp_path):
    write_cityscapes(tmp_path / "cs", 2, size=(192, 96))
    torch.manual_seed(0)
    model = build_model("tiny-clip")
    spec = DatasetSpec(kind="cityscapes", root=str(tmp_path / "cs"), name="cs", scale=(256, 128))
    cfg = EvalConfig(targets=[spec], crop_size=128, stride=85, num_samples=0)
    result = evaluate_targets(model, [spec], cfg, tmp_path / "out")["cs"]
    saved = json.loads((tmp_path / "out" / "cs" / "iou.json").read_text())
    # 192x96 enlarged to fit 256x128 (the protocol enlarges, as mmseg's keep-ratio resize), then 1 x 3 windows.
    expected = {"mode": "slide", "crop_size": 128, "stride": 85, "input_box": None, "enlarge": False,
                "inputs": [{"input": [128, 256], "network": [128, 256], "windows": 3, "images": 2}],
                "resize_box": [256, 128],
                "summary": "resized keeping the ratio to fit 256x128 (w x h), then slide 128/85; "
                           "network input 128x256 (h x w): 3 windows, 2 images"}
    assert saved["inference"] == result.metrics["inference"] == expected
    assert f"Inference: {expected['summary']}" in (tmp_path / "out" / "cs" / "iou.md").read_text()
    # ... and where its ground truth comes from: the label files and the table that made train ids of them.
    gt = saved["ground_truth"]
    assert gt["dataset"] == "CityscapesDataset" and gt["label_map"] == "cityscapes" and "labelIds" in gt["labels"]
    assert f"label map cityscapes ({gt['label_map_source']})" in (tmp_path / "out" / "cs" / "iou.md").read_text()
