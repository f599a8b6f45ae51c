"""Trainer: config loading, parameter groups, schedule, checkpoints, exact resume, NaN stop, run outputs, CLIs."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from mfuser_model.checkpoint import build_model, load_model
from mfuser_model.config import resolve_preset
from mfuser_model.config_io import dataclass_from_dict
from mfuser_model.errors import CheckpointError, ConfigError
from training.checkpointing import (
    capture_rng_state,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from training.config import TrainConfig, load_train_config
from training.distributed import IterationBatchSampler
from training.optim import OptimConfig, build_optimizer, lr_at, param_groups
from training.synthetic import write_gtav
from training.trainer import TrainingError, train

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "config" / "train").glob("*.yaml"))


@pytest.fixture(scope="module")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "gtav"
    write_gtav(root, 6, size=(112, 56), seed=3)
    return root


def tiny_config(tmp_path: Path, source: Path, **top: object) -> TrainConfig:
    """A tiny-eva02 run on 56x56 crops that takes a fraction of a second per iteration."""
    data = {
        "name": "tiny_test",
        "work_dir": str(tmp_path / "run"),
        "model": {"preset": "tiny-eva02"},
        "data": {"source": {"kind": "gtav", "root": str(source)}, "crop_size": 56, "ratio_range": [0.8, 1.2],
                 "num_workers": 0, "rare_class": {"min_pixels": 20, "cache_dir": str(tmp_path / "rcs")}},
        "optim": {"lr": 1e-3, "warmup_iters": 2},
        "loss": {"num_points": 64},
        "iterations": 4,
        "batch_size": 2,
        "seed": 7,
        "device": "cpu",
        "checkpoint_interval": 2,
        "log_interval": 1,
        "progress_bar": False,
        "tensorboard": False,
        "eval": {"targets": []},
    }
    data.update(top)
    return dataclass_from_dict(TrainConfig, data, where="<test>")


# ---- config --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_train_configs_load_and_name_real_presets(path: Path):
    cfg = load_train_config(path)
    assert cfg.name == path.stem
    assert resolve_preset(cfg.model.preset).is_file()
    assert all(t.root for t in cfg.eval.targets) and cfg.data.source.root


def test_config_typo_is_rejected_naming_the_file_and_key(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    text = (REPO / "config/train/synthetic_tiny.yaml").read_text()
    text = text.replace("crop_size: 128\n  ratio", "crop_sise: 1\n  ratio")
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key .*data.*crop_sise"):
        load_train_config(bad)


def test_command_line_overrides_are_parsed_as_yaml():
    cfg = load_train_config(REPO / "config/train/synthetic_tiny.yaml",
                            ["optim.lr=3e-4", "data.rare_class.enabled=false", "iterations=7"])
    assert cfg.optim.lr == 3e-4 and cfg.data.rare_class.enabled is False and cfg.iterations == 7
    with pytest.raises(ConfigError, match="iterations: expected an integer"):
        load_train_config(REPO / "config/train/synthetic_tiny.yaml", ["iterations=many"])


# ---- optimizer -----------------------------------------------------------------------------------------------
def test_param_groups_exclude_frozen_and_spare_norms_embeddings_and_tagged_params():
    model = build_model("tiny-eva02")
    model.freeze_encoders(True)
    groups = {g["name"]: g for g in param_groups(model, 1e-5)}
    decay, no_decay = set(groups["decay"]["param_names"]), set(groups["no_decay"]["param_names"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    assert not any(n.startswith(("backbone.vfm.", "backbone.vlm.", "text_encoder.tower.")) for n in trainable)
    assert {"backbone.fusers.0.A_log", "backbone.fusers.0.D", "context_decoder.layers.0.fuser.A_log"} <= no_decay
    assert {"head.query_embed.weight", "head.level_embed.weight", "backbone.fusers.0.norm.weight",
            "head.decoder_norm.weight", "context_decoder.memory_proj.0.weight"} <= no_decay
    assert {"backbone.fusers.0.in_proj.weight", "head.cls_embed.weight", "gamma"} <= decay
    assert groups["decay"]["weight_decay"] == 1e-5 and groups["no_decay"]["weight_decay"] == 0.0
    opt = build_optimizer(model, OptimConfig())
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)


def test_lr_schedule_is_poly_with_linear_warmup_as_mmcv():
    cfg = OptimConfig(lr=1e-4, warmup_iters=1500, warmup_ratio=1e-6, power=0.9, min_lr=1e-6)
    total = 20000
    assert lr_at(0, total, cfg) == pytest.approx(1e-4 * 1e-6)
    poly = (1e-4 - 1e-6) * (1 - 1500 / total) ** 0.9 + 1e-6
    assert lr_at(1500, total, cfg) == pytest.approx(poly)
    half = lr_at(750, total, cfg)
    poly750 = (1e-4 - 1e-6) * (1 - 750 / total) ** 0.9 + 1e-6
    assert half == pytest.approx(poly750 * (1 - 0.5 * (1 - 1e-6)))
    assert lr_at(total, total, cfg) == pytest.approx(1e-6)
    after = [lr_at(i, total, cfg) for i in range(1500, total + 1, 500)]
    assert all(a > b for a, b in itertools.pairwise(after))


# ---- checkpoints -------------------------------------------------------------------------------------------------
def test_checkpoints_are_atomic_weights_only_and_pruned(tmp_path: Path):
    for it in (2, 4, 6):
        save_checkpoint(checkpoint_path(tmp_path, it), {"iteration": it, "rng": [capture_rng_state()]})
    assert not list(tmp_path.glob(".*tmp"))
    assert [i for i, _ in list_checkpoints(tmp_path)] == [2, 4, 6]
    prune_checkpoints(tmp_path, keep=2)
    assert [i for i, _ in list_checkpoints(tmp_path)] == [4, 6]
    payload = load_checkpoint(latest_checkpoint(tmp_path))
    assert payload["iteration"] == 6
    torch.load(latest_checkpoint(tmp_path), weights_only=True)  # plain types and tensors only

    (tmp_path / "iter_0000008.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="iter_0000008.pt: cannot read"):
        load_checkpoint(tmp_path / "iter_0000008.pt")


def test_rng_state_round_trip_restores_every_generator():
    import random

    import numpy as np

    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(2))
    restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_iteration_sampler_gives_disjoint_rank_positions_and_resumes_by_iteration():
    r0 = list(IterationBatchSampler(2, 0, 3, rank=0, world_size=2))
    r1 = list(IterationBatchSampler(2, 0, 3, rank=1, world_size=2))
    assert r0 == [[0, 1], [4, 5], [8, 9]] and r1 == [[2, 3], [6, 7], [10, 11]]
    assert list(IterationBatchSampler(2, 2, 3, rank=1, world_size=2)) == r1[2:]


# ---- training runs -------------------------------------------------------------------------------------------
def test_resume_after_a_stop_reproduces_the_uninterrupted_run_bit_exactly(tmp_path: Path, source_root: Path):
    straight = train(tiny_config(tmp_path / "a", source_root, iterations=4))
    cfg_b = tiny_config(tmp_path / "b", source_root, iterations=4)
    first = train(cfg_b, stop_at=2)
    assert first.iterations == 2 and first.model_path is None
    assert [i for i, _ in list_checkpoints(cfg_b.run_dir / "checkpoints")] == [2]
    resumed = train(cfg_b)
    assert resumed.iterations == 4
    assert first.losses + resumed.losses == straight.losses  # exact float equality
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_run_writes_config_revision_metrics_checkpoints_model_and_reports(tmp_path: Path, source_root: Path):
    target = {"name": "fog", "kind": "cityscapes", "root": str(tmp_path / "fog"), "scale": [112, 56],
              "synthetic": {"num_images": 2, "size": [112, 56], "style": "fog", "seed": 9}}
    cfg = tiny_config(tmp_path, source_root, iterations=3, keep_checkpoints=1,
                      eval={"targets": [target], "crop_size": 56, "stride": 37, "num_samples": 2},
                      data={"source": {"kind": "gtav", "root": str(source_root)}, "crop_size": 56,
                            "num_workers": 0, "generate_if_missing": True, "rare_class": {"enabled": False}})
    result = train(cfg)
    run = cfg.run_dir
    assert load_train_config(run / "config.yaml") == cfg  # the dump is a loadable, complete config
    assert (run / "git_revision.txt").read_text().strip()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["iteration"] for r in train_rows] == [1, 2, 3]
    assert {"loss_cls", "loss_mask", "loss_dice", "loss_align", "lr"} <= set(train_rows[0])
    assert any("mIoU/fog" in r for r in rows)
    assert [i for i, _ in list_checkpoints(run / "checkpoints")] == [3]
    ckpt = load_checkpoint(run / "checkpoints" / "iter_0000003.pt")
    assert ckpt["iteration"] == 3 and set(ckpt["model"]) == set(result.model.state_dict())  # nothing frozen here
    model = load_model(result.model_path)
    assert all(torch.equal(v, result.model.state_dict()[k]) for k, v in model.state_dict().items())
    for name in ("iou.md", "iou.json", "samples.png"):
        assert (run / "eval" / "fog" / name).is_file()
    assert math.isfinite(result.eval["fog"]) and 0.0 <= result.eval["fog"] <= 1.0
    assert json.loads((run / "eval" / "fog" / "iou.json").read_text())["images"] == 2


def test_frozen_encoders_stay_out_of_the_checkpoint(tmp_path: Path, source_root: Path):
    cfg = tiny_config(tmp_path, source_root, iterations=1, checkpoint_interval=1,
                      model={"preset": "tiny-eva02", "overrides": {"freeze_encoders": True}})
    result = train(cfg)
    saved = set(load_checkpoint(cfg.run_dir / "checkpoints" / "iter_0000001.pt")["model"])
    frozen = {n for n, p in result.model.named_parameters() if not p.requires_grad}
    assert frozen and not saved & frozen
    assert "backbone.fusers.0.A_log" in saved and "backbone.pyramid.fpn1.1.running_mean" in saved


def test_a_nan_loss_stops_training_with_the_iteration_named(tmp_path: Path, source_root: Path):
    with pytest.raises(ConfigError, match=r"loss.cls: value nan must be >= 0"):  # a config cannot ask for it
        tiny_config(tmp_path, source_root, loss={"num_points": 64, "cls": float("nan")})
    cfg = tiny_config(tmp_path, source_root)
    object.__setattr__(cfg.loss, "cls", float("nan"))  # past the config's range check, to make the loss NaN
    with pytest.raises(TrainingError, match=r"non-finite loss at iteration 1 .*loss_cls"):
        train(cfg)


def test_cli_trains_then_eval_cli_scores_the_model(tmp_path: Path, source_root: Path, capsys: pytest.CaptureFixture):
    from training.eval_cli import main as eval_main
    from training.train import main as train_main

    cfg_path = tmp_path / "cfg.yaml"
    base = tiny_config(tmp_path, source_root)
    from mfuser_model.config_io import dataclass_to_dict

    data = dataclass_to_dict(base)
    data["eval"] = {"targets": [{"name": "src", "kind": "gtav", "root": str(source_root), "scale": "native",
                                 "max_images": 2}], "crop_size": 56, "stride": 37, "num_samples": 1}
    cfg_path.write_text(yaml.safe_dump(data))
    assert train_main(["--config", str(cfg_path), "iterations=2", "eval.targets=[]", "--resume", "none"]) == 0
    started = capsys.readouterr().out  # what ran where, printed before training
    assert "merged config:\nname:" in started and "iterations: 2" in started and "device " in started
    assert f"run folder {base.run_dir}; resume none (start afresh); TensorBoard off" in started  # tiny: no tb
    model = base.run_dir / "model.safetensors"
    assert model.is_file()
    out = tmp_path / "evalout"
    assert eval_main(["--config", str(cfg_path), "--model", str(model), "--out", str(out), "--device", "cpu"]) == 0
    assert "| src" in capsys.readouterr().out
    assert (out / "src" / "iou.md").is_file()
    assert train_main(["--config", str(cfg_path), "optim.lrr=1"]) == 2
    assert "lrr" in capsys.readouterr().err
    assert eval_main(["--config", str(cfg_path), "--model", str(model), "--targets", "nope"]) == 2


# ---- evaluation helpers ----------------------------------------------------------------------------------------
def test_eval_scales_follow_the_paper_protocol_per_dataset_kind():
    from training.config import DatasetSpec
    from training.evaluate import eval_scale

    assert eval_scale(DatasetSpec(kind="cityscapes", root="x")) == (2048, 1024)
    assert eval_scale(DatasetSpec(kind="mapillary", root="x")) == (2048, 1024)
    assert eval_scale(DatasetSpec(kind="bdd100k", root="x")) == (1280, 720)
    assert eval_scale(DatasetSpec(kind="gtav", root="x")) is None
    assert eval_scale(DatasetSpec(kind="cityscapes", root="x", scale="native")) is None
    assert eval_scale(DatasetSpec(kind="cityscapes", root="x", scale=(256, 128))) == (256, 128)


def test_missing_synthetic_dataset_error_points_to_generate_if_missing(tmp_path: Path):
    from training.config import DatasetSpec, SyntheticSpec
    from training.errors import DatasetError
    from training.evaluate import open_dataset

    spec = DatasetSpec(kind="bdd100k", root=str(tmp_path / "bdd"), synthetic=SyntheticSpec(num_images=2, size=(64, 32)))
    with pytest.raises(DatasetError, match="generate_if_missing"):
        open_dataset(spec)
    dataset = open_dataset(spec, generate=True)
    assert len(dataset) == 2 and dataset.load(0)["label"].shape == (32, 64)
    assert not list(tmp_path.glob(".bdd.tmp-*"))


def test_sample_grid_puts_image_ground_truth_and_prediction_side_by_side():
    import numpy as np

    from mfuser_model.classes import CITYSCAPES_PALETTE
    from training.evaluate import sample_grid

    image = np.full((20, 30, 3), 7, np.uint8)
    gt = np.zeros((20, 30), np.uint8)
    pred = np.full((20, 30), 10, np.uint8)
    grid = sample_grid([(image, gt, pred), (image, gt, pred)], CITYSCAPES_PALETTE)
    assert grid.shape == (2 * 22, 90, 3)
    assert tuple(grid[0, 0]) == (7, 7, 7)
    assert tuple(grid[0, 30]) == CITYSCAPES_PALETTE[0] and tuple(grid[0, 60]) == CITYSCAPES_PALETTE[10]
    # With the class names, the colour legend (the same palette) goes below: one swatch per class id.
    from mfuser_model.classes import CITYSCAPES_CLASSES

    legend = sample_grid([(image, gt, pred)], CITYSCAPES_PALETTE, class_names=CITYSCAPES_CLASSES)[22:]
    assert legend.shape[1] == 90 and legend.shape[0] >= 19 * 18
    assert tuple(legend[3 + 6, 4 + 7]) == CITYSCAPES_PALETTE[0]
    assert tuple(legend[18 * 10 + 3 + 6, 4 + 7]) == CITYSCAPES_PALETTE[10]
