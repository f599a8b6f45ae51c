"""Every config dataclass checks the ranges in its field types, from a file (naming the file and the dotted key)
and when built in code; numeric fields without a declared range are not allowed."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest
import yaml

from mfuser_model.config import BackboneWeights, ModelConfig
from mfuser_model.config_io import Range, dataclass_from_dict, load_dataclass
from mfuser_model.errors import ConfigError
from mfuser_ros.node.config import NodeConfig
from mfuser_ros.replay.fleet import FleetOptions
from mfuser_ros.replay.runner import ReplayOptions
from training.config import (
    DataConfig,
    DatasetSpec,
    EvalConfig,
    ModelSection,
    RareClassConfig,
    SyntheticSpec,
    TrainConfig,
)
from training.losses import LossWeights
from training.optim import OptimConfig

# Every config class with the smallest mapping that builds it.
_SOURCE = {"kind": "gtav", "root": "data/gta"}
CONFIGS: dict[type, dict] = {
    ModelConfig: {"name": "x", "vlm": "clip"},
    BackboneWeights: {},
    TrainConfig: {"name": "x", "model": {"preset": "tiny-clip"}, "data": {"source": _SOURCE}},
    DataConfig: {"source": _SOURCE},
    DatasetSpec: _SOURCE,
    SyntheticSpec: {},
    RareClassConfig: {},
    EvalConfig: {},
    ModelSection: {"preset": "tiny-clip"},
    OptimConfig: {},
    LossWeights: {},
    NodeConfig: {},
    ReplayOptions: {"bag": "in.mcap", "out": "out"},
    FleetOptions: {"bags": ["in.mcap"], "out": "out", "replay": {"bag": "in.mcap", "out": "out"}},
}


def _marks(tp: typing.Any) -> list[Range]:
    """The Range marks of a field type, directly or inside ``X | None``."""
    if typing.get_origin(tp) is typing.Annotated:
        return [m for m in typing.get_args(tp)[1:] if isinstance(m, Range)]
    if typing.get_origin(tp) in (typing.Union, type(int | None)):
        return [m for arm in typing.get_args(tp) for m in _marks(arm)]
    return []


def _unbounded_numbers(tp: typing.Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated or origin is typing.Literal:
        return False
    if tp in (int, float):
        return True
    return any(_unbounded_numbers(a) for a in typing.get_args(tp))


def _bad_value(mark: Range, number: type) -> typing.Any:
    if mark.min_len is not None:
        return []
    if mark.ge is not None:
        return number(mark.ge - 1)
    if mark.gt is not None:
        return number(mark.gt)
    return number(mark.le + 1 if mark.le is not None else mark.lt)


def _cases() -> list[tuple[type, str, typing.Any]]:
    cases = []
    for cls in CONFIGS:
        for name, tp in typing.get_type_hints(cls, include_extras=True).items():
            for mark in _marks(tp):
                base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else int
                number = float if base is float or "float" in str(tp) else int
                cases.append((cls, name, _bad_value(mark, number)))
    return cases


def test_every_number_in_a_config_declares_its_range():
    unbounded = [f"{cls.__name__}.{name}" for cls in CONFIGS
                 for name, tp in typing.get_type_hints(cls, include_extras=True).items() if _unbounded_numbers(tp)]
    assert unbounded == []
    assert len(_cases()) > 80  # the marks this test walks (a guard against it silently checking nothing)


@pytest.mark.parametrize(("cls", "key", "bad"), _cases(), ids=lambda v: getattr(v, "__name__", str(v)))
def test_an_out_of_range_value_names_the_file_and_the_key(tmp_path, cls, key, bad):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(CONFIGS[cls]))
    load_dataclass(cls, path)  # the minimal mapping is valid
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: {key}: ")):
        load_dataclass(cls, path, {key: bad})
    kwargs = {f.name: getattr(dataclass_from_dict(cls, CONFIGS[cls]), f.name) for f in dataclasses.fields(cls)}
    with pytest.raises(ConfigError, match="^" + re.escape(f"{key}: ")):
        cls(**(kwargs | {key: tuple(bad) if isinstance(bad, list) else bad}))


def test_nested_keys_are_named_in_full(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(CONFIGS[TrainConfig]))
    for key, bad in (("data.source.synthetic.size", [64, 0]), ("optim.betas", [0.9, 1.0]),
                     ("data.ratio_range", [0.5, -2.0]), ("eval.targets", [{"kind": "gtav", "root": "x",
                                                                            "max_images": 0}])):
        with pytest.raises(ConfigError, match=re.escape(f"{path}: {key}")):
            load_dataclass(TrainConfig, path, {key: bad})
    with pytest.raises(ConfigError, match=re.escape(f"{path}: data: ratio_range: [2.0, 0.5] must be [low, high]")):
        load_dataclass(TrainConfig, path, {"data.ratio_range": [2.0, 0.5]})
    with pytest.raises(ConfigError, match=re.escape(f"{path}: eval: stride: value 600 must be <= crop_size (512)")):
        load_dataclass(TrainConfig, path, {"eval.stride": 600})
