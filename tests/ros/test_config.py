"""NodeConfig: strict loading of ROS 2 parameter files, validation naming the parameter, topic naming."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mfuser_model.errors import ConfigError
from mfuser_ros.node.config import (
    BUNDLED_MODEL,
    NodeConfig,
    camera_namespace,
    is_compressed_topic,
    load_node_config,
    node_config_from_params,
    output_topic,
)

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "mfuser_node.yaml"


def write_params(tmp_path, params, section="/**"):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({section: {"ros__parameters": params}}), encoding="utf-8")
    return path


def test_shipped_parameter_file_loads_and_equals_the_defaults():
    # One noted difference: the file names the bundled model, NodeConfig's default is no checkpoint (refused).
    assert load_node_config(SHIPPED) == NodeConfig(checkpoint=BUNDLED_MODEL)


def test_the_node_refuses_random_weights_unless_asked_and_names_the_overrides():
    with pytest.raises(ConfigError, match=r"'checkpoint' is empty.*checkpoint:=package://.*allow_random_weights:=true"):
        NodeConfig().check_weights()
    NodeConfig(allow_random_weights=True).check_weights()
    NodeConfig(checkpoint=BUNDLED_MODEL).check_weights()
    assert NodeConfig(threads=-1).thread_option is None and NodeConfig(threads=0).thread_option == 0
    with pytest.raises(ConfigError, match="threads"):
        NodeConfig(threads=-2)


def test_shipped_parameter_file_documents_every_parameter():
    text = SHIPPED.read_text(encoding="utf-8")
    for field in dataclasses.fields(NodeConfig):
        assert f"{field.name}:" in text, f"config/mfuser_node.yaml does not document {field.name}"


def test_parameter_file_values_and_overrides_are_applied(tmp_path):
    path = write_params(tmp_path, {"image_topics": ["front/image_raw", "rear/image_raw/compressed"],
                                   "output_width": 320, "output_height": 240, "device": "cuda:1"})
    config = load_node_config(path, {"precision": "bf16"})
    assert config.image_topics == ("front/image_raw", "rear/image_raw/compressed")
    assert config.output_size == (240, 320)
    assert config.precision == "bf16"
    assert config.camera_namespaces() == ["front", "rear"]


def test_node_name_section_wins_over_wildcard(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"max_batch": 2}},
                                    "seg": {"ros__parameters": {"max_batch": 3}}}), encoding="utf-8")
    assert load_node_config(path, node_name="seg").max_batch == 3


def test_misspelled_parameter_is_rejected_naming_it(tmp_path):
    path = write_params(tmp_path, {"image_topic": ["a/image"]})
    with pytest.raises(ConfigError, match=r"params.yaml: unknown key 'image_topic'"):
        load_node_config(path)


def test_wrong_type_is_rejected_naming_the_parameter(tmp_path):
    with pytest.raises(ConfigError, match="max_batch: expected an integer"):
        load_node_config(write_params(tmp_path, {"max_batch": "four"}))


def test_file_without_ros_parameters_section_is_rejected(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("max_batch: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unexpected top-level key 'max_batch'"):
        load_node_config(path)


@pytest.mark.parametrize(("params", "name"), [
    ({"device": "gpu0"}, "device"),
    ({"precision": "int8"}, "precision"),
    ({"decoder_backend": "openvino"}, "decoder_backend"),
    ({"image_topics": []}, "image_topics"),
    ({"image_topics": ["bad topic"]}, "image_topics"),
    ({"input_qos_depth": 0}, "input_qos_depth"),
    ({"input_qos": "fast"}, "input_qos"),
    ({"output_width": 320}, "output_width/output_height"),
    ({"overlay_alpha": 1.5}, "overlay_alpha"),
    ({"stride": 600}, "stride"),
    ({"latency_warn_ms": 100.0, "latency_error_ms": 50.0}, "latency_error_ms"),
    ({"camera_names": ["a", "b"]}, "camera_names"),
    ({"image_topics": ["a/image", "a/image/compressed"]}, "camera_names"),
    ({"preset": "", "checkpoint": ""}, "preset"),
])
def test_invalid_values_fail_with_a_message_naming_the_parameter(params, name):
    with pytest.raises(ConfigError, match=name.replace("/", ".")):
        node_config_from_params(params)


@pytest.mark.parametrize(("topic", "camera", "compressed"), [
    ("camera/image_raw", "camera", False),
    ("/robot/front/image_raw/compressed", "/robot/front", True),
    ("image", "", False),
    ("image/compressed", "", True),
])
def test_camera_namespace_and_transport_follow_image_transport_names(topic, camera, compressed):
    assert camera_namespace(topic) == camera
    assert is_compressed_topic(topic) is compressed


def test_output_topics_are_relative_to_the_camera():
    assert output_topic("front", "labels") == "front/mfuser/labels"
    assert output_topic("", "color") == "mfuser/color"
