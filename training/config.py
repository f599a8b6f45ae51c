"""The training config: one frozen dataclass tree, loaded strictly from ``config/train/*.yaml``.

``load_train_config(path, ["optim.lr=2e-4", "data.source.root=/data/gta"])`` reads the YAML, applies dotted
command-line overrides (values parsed as YAML) and builds :class:`TrainConfig`; an unknown key or a value of the
wrong type raises :class:`~mfuser_model.errors.ConfigError` naming the file and the dotted key. Dataset paths
are config keys only; relative paths are taken from the current directory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from mfuser_model.config_io import (
    NonNegInt,
    PosFloat,
    PosInt,
    Range,
    UnitFloat,
    check_fields,
    load_dataclass,
    parse_override,
)
from mfuser_model.errors import ConfigError
from training.losses import LossWeights
from training.optim import OptimConfig

__all__ = [
    "DataConfig",
    "DatasetSpec",
    "EvalConfig",
    "ModelSection",
    "RareClassConfig",
    "SyntheticSpec",
    "TrainConfig",
    "load_train_config",
    "parse_overrides",
]

DatasetKind = Literal["gtav", "synthia", "cityscapes", "bdd100k", "mapillary"]
SyntheticStyle = Literal["game", "day", "night", "fog", "rain", "texture"]


@dataclass(frozen=True)
class SyntheticSpec:
    """How to render a synthetic stand-in for a dataset (``training.synthetic``) when it is missing."""

    num_images: PosInt = 100
    size: tuple[PosInt, PosInt] = (512, 256)  # (width, height) of the rendered frames
    style: SyntheticStyle = "game"
    seed: NonNegInt = 0

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset in its published folder layout.

    ``scale`` is the evaluation resize box ``(w, h)`` (keep ratio); ``"auto"`` is the paper's protocol for the
    kind ((2048, 1024) for Cityscapes and Mapillary, (1280, 720) for BDD100K, native otherwise) and
    ``"native"`` keeps the size.
    """

    kind: DatasetKind
    root: str
    name: str = ""
    # default per kind: train for sources, val (validation for Mapillary) for targets; GTAV: all images, or one
    # RobustNet split folder (train, valid, test)
    split: str | None = None
    scale: tuple[PosInt, PosInt] | Literal["auto", "native"] = "auto"
    max_images: PosInt | None = None  # evaluate on the first N images only (quick checks)
    synthetic: SyntheticSpec | None = None  # rendered into ``root`` when missing and data.generate_if_missing
    # Mapillary only: the name table for raw labels (openseg, narrow, definitions; default openseg, see
    # training.label_maps) and the label layout (auto, trainids, rein, half, v1.2, legacy, v2.0).
    label_map: str | None = None
    label_version: str = "auto"
    # Which classes the mIoU averages over (mfuser_model.metrics.MIOU_RULES): mmseg (the paper's), or bdd100k to
    # put a number next to one the BDD100K toolkit printed.
    miou_rule: Literal["mmseg", "bdd100k"] = "mmseg"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.kind != "mapillary" and (self.label_map is not None or self.label_version != "auto"):
            msg = f"label_map and label_version apply to kind mapillary only, not {self.kind}"
            raise ConfigError(msg)


@dataclass(frozen=True)
class RareClassConfig:
    """DAFormer rare-class sampling (MFuser's ``UGDataset``)."""

    enabled: bool = True
    class_temp: PosFloat = 100.0
    min_pixels: NonNegInt = 3000
    min_crop_ratio: UnitFloat = 0.5
    max_recrops: NonNegInt = 10
    cache_dir: str | None = None  # default: beside the labels (falls back to ~/.cache/mfuser/rcs)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class DataConfig:
    """Source data and augmentation."""

    source: DatasetSpec
    crop_size: PosInt = 512
    ratio_range: tuple[PosFloat, PosFloat] = (0.5, 2.0)
    cat_max_ratio: Annotated[float, Range(gt=0, le=1)] = 0.75
    flip_prob: UnitFloat = 0.5
    photometric: bool = True
    rare_class: RareClassConfig = field(default_factory=RareClassConfig)
    num_workers: NonNegInt = 4
    generate_if_missing: bool = False  # render synthetic data for specs with a ``synthetic`` section

    def __post_init__(self) -> None:
        check_fields(self)
        if self.ratio_range[0] > self.ratio_range[1]:
            msg = f"ratio_range: {list(self.ratio_range)} must be [low, high] with low <= high"
            raise ConfigError(msg)


@dataclass(frozen=True)
class EvalConfig:
    """Multi-target evaluation (the paper: slide 512 / stride 341, 19-class mIoU over the whole set)."""

    targets: list[DatasetSpec] = field(default_factory=list)
    mode: Literal["slide", "whole"] = "slide"
    crop_size: PosInt = 512
    stride: PosInt = 341
    interval: NonNegInt = 0  # evaluate every N iterations during training; 0 = only at the end
    num_samples: NonNegInt = 4  # rows of the PNG grid of predictions per target
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.stride > self.crop_size:  # windows further apart than wide would leave pixels unscored
            msg = f"stride: value {self.stride} must be <= crop_size ({self.crop_size})"
            raise ConfigError(msg)


@dataclass(frozen=True)
class ModelSection:
    """Which MFuser to train: a preset name or YAML, dotted overrides of its config (e.g. weight paths)."""

    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    grad_checkpointing: bool = False  # recompute the encoder blocks in backward (saves memory, ~30% slower)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; dumped as ``config.yaml`` beside its checkpoints."""

    name: str
    model: ModelSection
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    eval: EvalConfig = field(default_factory=EvalConfig)
    work_dir: str | None = None  # default work_dirs/<name>
    iterations: PosInt = 20000
    batch_size: PosInt = 2  # per process (GPU)
    seed: NonNegInt = 2023  # numpy's generators take no negative seed
    device: str = "auto"  # auto = cuda:<local rank> when CUDA is available, else cpu
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    checkpoint_interval: PosInt = 2000
    keep_checkpoints: PosInt = 3
    log_interval: PosInt = 50
    resume: str = "auto"  # auto = latest checkpoint in work_dir, none = start fresh, or a checkpoint path
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    find_unused_parameters: bool = False  # DDP flag; the reference sets True (it has dead SigLIP projections)
    progress_bar: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        names = [t.name for t in self.eval.targets]
        if any(not n for n in names) or len(set(names)) != len(names):
            msg = f"eval.targets need unique, non-empty names, got {names}"
            raise ConfigError(msg)

    @property
    def run_dir(self) -> Path:
        """The folder of checkpoints, logs, config dump and final model."""
        return Path(self.work_dir) if self.work_dir else Path("work_dirs") / self.name


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x", "optim.lr=1e-4"]`` -> ``{"a.b": 1, "c": "x", "optim.lr": 0.0001}``.

    Values are parsed as YAML, except that ``1e-4``-style numbers (strings to YAML 1.1, which wants ``1.0e-4``)
    become floats, as anyone typing a learning rate expects.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, value = parse_override(item)
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            value = float(value)
        out[key] = value
    return out


def load_train_config(path: str | Path, overrides: Sequence[str] | dict[str, Any] = ()) -> TrainConfig:
    """Load a training YAML with command-line style overrides (``key.sub=value``) or a dict of them."""
    ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return load_dataclass(TrainConfig, path, ov)
