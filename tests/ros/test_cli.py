"""``mfuser-node``: configuration errors exit with a message naming the parameter; model loading errors name it."""

from __future__ import annotations

import pytest
import yaml

from mfuser_model.errors import ConfigError
from mfuser_ros.cli import main
from mfuser_ros.config import NodeConfig
from mfuser_ros.model_loader import load_model


def test_invalid_parameter_exits_2_naming_it(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"overlay_alpha": 3.0}}}), encoding="utf-8")
    assert main(["--transport", "dds", "--config", str(path)]) == 2
    assert "overlay_alpha" in capsys.readouterr().err


def test_unknown_command_line_parameter_exits_2_naming_it(capsys):
    assert main(["--transport", "dds", "-p", "max_bach=2"]) == 2
    assert "max_bach" in capsys.readouterr().err


def test_unavailable_cuda_device_is_a_config_error_naming_device():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="parameter 'device'"):
        load_model(NodeConfig(device="cuda:0"))


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="no-such-preset"):
        load_model(NodeConfig(preset="no-such-preset"))
