"""Model config values out of range fail at load, naming the file and the key (issue 12 item 11)."""

from __future__ import annotations

import re

import pytest

from mfuser_model.config import ModelConfig, load_model_config
from mfuser_model.errors import ConfigError


@pytest.mark.parametrize(("line", "message"), [
    ("vfm_heads: 0", "vfm_heads: value 0 must be >= 1"),  # was a ZeroDivisionError building the network
    ("num_context: -1", "num_context: value -1 must be >= 0"),  # was a RuntimeError from torch.empty
    ("patch_size: 0", "patch_size: value 0 must be >= 1"),
    ("class_names: []", "class_names: must not be empty"),
    ("temperature: 0.0", "temperature: value 0.0 must be > 0"),
    ("vlm_drop_path: 1.0", "vlm_drop_path: value 1.0 must be in [0, 1)"),
    ("out_indices: [0, 1, 2, -3]", "out_indices[3]: value -3 must be >= 0"),
    ("palette: [[0, 0, 300]]\nclass_names: [road]", "palette[0][2]: value 300 must be in [0, 255]"),
])
def test_out_of_range_values_name_the_file_and_the_key(tmp_path, line, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: x\nvlm: clip\n{line}\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: {message}")):
        load_model_config(path)


def test_checks_across_fields_name_the_file_too(tmp_path):
    path = tmp_path / "heads.yaml"
    path.write_text("name: x\nvlm: clip\nvfm_dim: 48\nvfm_heads: 5\n")
    with pytest.raises(ConfigError, match=rf"^{path}: vfm_dim \(48\) must be a multiple of vfm_heads \(5\)"):
        load_model_config(path)
    with pytest.raises(ConfigError, match=r"tiny-clip.yaml: name_length \+ num_context \(5 \+ 20\) must fit"):
        load_model_config("tiny-clip", {"num_context": 20})  # the tiny text tower holds 16 positions


def test_a_config_built_in_code_is_held_to_the_same_ranges():
    with pytest.raises(ConfigError, match="^vfm_heads: value 0 must be >= 1"):
        ModelConfig(name="x", vlm="clip", vfm_heads=0)
    assert ModelConfig(name="x", vlm="clip", num_context=0).num_context == 0  # no context vectors is allowed
