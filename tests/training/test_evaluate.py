"""mfuser-eval's per-target report states the protocol: mode, window, resize box, network size, windows."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import torch

from mfuser_model.checkpoint import build_model, load_model, read_model_metadata, save_model
from mfuser_model.metrics import MIOU_RULES
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
    assert f"- inference: {expected['summary']}" in (tmp_path / "out" / "cs" / "iou.md").read_text()
    # ... and where its ground truth comes from: the label files and the table that made train ids of them.
    gt = saved["ground_truth"]
    assert gt["dataset"] == "CityscapesDataset" and gt["label_map"] == "cityscapes" and "labelIds" in gt["labels"]
    assert f"label map cityscapes ({gt['label_map_source']})" in (tmp_path / "out" / "cs" / "iou.md").read_text()


def test_report_records_rule_digest_backend_accuracy_and_logs_progress(tmp_path, caplog):
    write_cityscapes(tmp_path / "cs", 2, size=(192, 96))
    torch.manual_seed(0)
    path = save_model(build_model("tiny-clip"), tmp_path / "m.safetensors")
    model = load_model(path)
    spec = DatasetSpec(kind="cityscapes", root=str(tmp_path / "cs"), name="cs", scale=(256, 128), miou_rule="bdd100k")
    cfg = EvalConfig(targets=[spec], crop_size=128, stride=85, num_samples=1)
    with caplog.at_level(logging.INFO, logger="training.evaluate"):
        result = evaluate_targets(model, [spec], cfg, tmp_path / "out", model_file=path)["cs"]
    saved = json.loads((tmp_path / "out" / "cs" / "iou.json").read_text())
    md = (tmp_path / "out" / "cs" / "iou.md").read_text()
    digest = read_model_metadata(path)["tensors_sha256"]
    assert saved["model"] == {"file": str(path), "tensors_sha256": digest} and f"`{digest}`" in md
    assert saved["decoder_backend"] == "torch" and "- decoder backend: torch" in md
    assert saved["miou_rule"] == "bdd100k" and saved["mIoU"] == result.confusion.miou("bdd100k") == result.miou
    assert f"- mIoU rule: {MIOU_RULES['bdd100k']}" in md
    assert set(saved["Acc"]) == set(saved["IoU"]) and np.asarray(saved["confusion_matrix"]).shape == (19, 20)
    mean_row = next(line for line in md.splitlines() if line.startswith("| **mean**"))
    assert mean_row.split("|")[3].strip() == f"{100 * saved['mAcc']:.2f}%"
    # Progress: from the first slide window of the first image (with a rate and an ETA) to the last image.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cs: ")]
    assert lines[0].startswith("cs: 0/2 images (0.0%), image 1: window 1/3") and "ETA" in lines[0]
    assert lines[-2].startswith("cs: 2/2 images (100.0%)") and "done in" in lines[-2]
    # The sample grid carries the colour legend below its rows.
    grid = cv2.imread(str(tmp_path / "out" / "cs" / "samples.png"))
    assert grid.shape[0] > 96 + 2
