"""Proof that the whole training stack learns: a tiny MFuser trained on synthetic GTAV-style scenes on the CPU.

Chance level is about 1/19 = 0.053 mIoU. At 128x64 frames and 64x64 crops the tiny preset's 14-pixel patches
(a 4x4 token grid per crop) resolve the large classes (road, building, sky, car, sidewalk) within 300 iterations,
while poles, signs and people stay below one patch; measured on the source style: mIoU 0.157, pixel accuracy 0.74,
road 0.83, building 0.70, sky 0.66 IoU. The asserts keep a margin below that. The shifted target styles (fog,
night) are printed, not asserted: domain generalisation of a from-scratch tiny model is not the claim.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mfuser_model.config_io import dataclass_from_dict
from training.config import TrainConfig
from training.trainer import train

ITERATIONS = 300


def _target(name: str, kind: str, root: Path, style: str, seed: int) -> dict:
    return {"name": name, "kind": kind, "root": str(root), "scale": "native",
            "synthetic": {"num_images": 16, "size": [128, 64], "style": style, "seed": seed}}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~2-4 min on 2 idle cores; generous for loaded CI machines
def test_tiny_mfuser_learns_synthetic_street_scenes(tmp_path: Path):
    data = tmp_path / "data"
    cfg = dataclass_from_dict(TrainConfig, {
        "name": "learning_proof",
        "work_dir": str(tmp_path / "run"),
        "model": {"preset": "tiny-eva02"},
        "data": {
            "source": {"kind": "gtav", "root": str(data / "gtav"),
                       "synthetic": {"num_images": 64, "size": [128, 64], "style": "game", "seed": 1}},
            "generate_if_missing": True,
            "crop_size": 64,
            "ratio_range": [0.75, 1.25],  # near the evaluation scale
            "photometric": False,  # the validation set has the source style; colour jitter only slows fitting
            "num_workers": 0,
            "rare_class": {"min_pixels": 10},  # 3000 px of a 2 Mpx GTAV frame, scaled to 128x64
        },
        "optim": {"lr": 2e-3, "warmup_iters": 20, "weight_decay": 1e-5},
        "loss": {"num_points": 256},
        "iterations": ITERATIONS,
        "batch_size": 2,
        "seed": 0,
        "device": "cpu",
        "checkpoint_interval": ITERATIONS,
        "log_interval": 50,
        "progress_bar": False,
        "tensorboard": False,
        "eval": {"mode": "slide", "crop_size": 64, "stride": 43, "num_samples": 2, "targets": [
            _target("source_val", "gtav", data / "gtav_val", "game", 11),
            _target("fog", "cityscapes", data / "fog", "fog", 12),
            _target("night", "cityscapes", data / "night", "night", 13),
        ]},
    }, where="<test_learning>")
    start = time.perf_counter()
    result = train(cfg)
    elapsed = time.perf_counter() - start
    first, last = sum(result.losses[:20]) / 20, sum(result.losses[-20:]) / 20
    print(f"\n{ITERATIONS} iterations in {elapsed:.0f} s ({elapsed / ITERATIONS:.2f} s/it incl. data and eval); "
          f"loss {first:.2f} -> {last:.2f}; mIoU " + ", ".join(f"{k} {100 * v:.1f}" for k, v in result.eval.items()))
    assert last < 0.6 * first
    source = json.loads((cfg.run_dir / "eval" / "source_val" / "iou.json").read_text())
    print(f"source_val: aAcc {source['aAcc']:.3f}, IoU " + ", ".join(
        f"{k} {v:.2f}" for k, v in source["IoU"].items() if v))
    assert result.eval["source_val"] > 0.12, f"source-style mIoU {result.eval['source_val']:.3f} is near chance"
    assert source["aAcc"] > 0.6
    assert source["IoU"]["road"] > 0.6 and source["IoU"]["sky"] > 0.4 and source["IoU"]["building"] > 0.4
